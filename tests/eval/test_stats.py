"""Statistics over seeds: against numpy/scipy directly and a hand-worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bissl.eval.stats import compare_to_reference, format_summary, holm, paired_comparison, summarize


def test_summarize_uses_sample_std() -> None:
    values = [71.0, 72.5, 70.25, 73.0]
    summary = summarize(values)
    assert summary["mean"] == pytest.approx(np.mean(values))
    assert summary["std"] == pytest.approx(np.std(values, ddof=1))
    assert summary["n"] == 4 and summary["values"] == values
    # mean 71.6875; squared deviations sum to 4.921875, / 3 = 1.640625, sqrt = 1.2809.
    assert format_summary(summary, digits=1) == "71.7 ± 1.3 (n=4)"


def test_summarize_single_value_has_zero_std_and_rejects_empty_or_nan() -> None:
    assert summarize([3.5]) == {"mean": 3.5, "std": 0.0, "n": 1, "values": [3.5]}
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")])


def test_paired_comparison_hand_example() -> None:
    # Differences b - a = (1, 2, 0): mean 1, sample std 1, t = 1 / (1 / sqrt 3) = sqrt 3 (2 dof).
    # For 2 degrees of freedom P(|T| > t) = 1 - t / sqrt(t^2 + 2) = 1 - sqrt(3/5).
    # Wilcoxon drops the zero; the ranks 1 and 2 are both positive, the most extreme of 2^2 sign patterns,
    # so the two-sided exact p-value is 2 / 4 = 0.5.
    result = paired_comparison([1.0, 2.0, 3.0], [2.0, 4.0, 3.0])
    assert result["mean_difference"] == pytest.approx(1.0)
    assert result["std_difference"] == pytest.approx(1.0)
    assert result["t_pvalue"] == pytest.approx(1 - math.sqrt(3 / 5))
    # One-sided (b > a): half the two-sided value, since the mean difference is positive.
    assert result["t_pvalue_greater"] == pytest.approx((1 - math.sqrt(3 / 5)) / 2)
    assert result["wilcoxon_pvalue"] == pytest.approx(0.5)
    half_width = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert half_width == pytest.approx(2.4841377, abs=1e-6)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((1 - half_width, 1 + half_width))
    assert result["n"] == 3


def test_paired_comparison_matches_scipy() -> None:
    generator = np.random.default_rng(0)
    baseline = 70 + generator.normal(size=10)
    bissl = baseline + 0.8 + 0.5 * generator.normal(size=10)
    result = paired_comparison(baseline, bissl)
    differences = bissl - baseline
    assert result["mean_difference"] == pytest.approx(differences.mean())
    assert result["t_pvalue"] == pytest.approx(stats.ttest_rel(bissl, baseline).pvalue)
    assert result["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(bissl, baseline).pvalue)
    interval = stats.t.interval(0.95, 9, loc=differences.mean(), scale=stats.sem(differences))
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(interval)
    assert result["t_pvalue"] < 0.01
    reverse = paired_comparison(bissl, baseline)
    assert reverse["mean_difference"] == pytest.approx(-result["mean_difference"])
    assert reverse["t_pvalue"] == pytest.approx(result["t_pvalue"])
    assert reverse["t_pvalue_greater"] == pytest.approx(1 - result["t_pvalue"] / 2)


def test_paired_comparison_degenerate_cases() -> None:
    single = paired_comparison([1.0], [2.0])
    assert single["mean_difference"] == 1.0 and single["n"] == 1
    assert single["ci_low"] is None and single["t_pvalue"] is None and single["wilcoxon_pvalue"] is None
    identical = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert identical["mean_difference"] == 0.0
    assert identical["t_pvalue"] is None and identical["wilcoxon_pvalue"] is None
    with pytest.raises(ValueError, match="equally many"):
        paired_comparison([1.0, 2.0], [1.0])


def test_holm_hand_computed() -> None:
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> kept at 0.06 (monotone)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_skips_none_caps_at_one_and_rejects_bad_values() -> None:
    # m = 2 (None does not count): 0.2 x2 = 0.4; 0.6 x1 = 0.6
    assert holm([0.2, None, 0.6]) == [pytest.approx(0.4), None, pytest.approx(0.6)]
    # 0.5 x2 = 1.0; 0.7 x1 = 0.7 -> kept at 1.0
    assert holm([0.7, 0.5]) == [1.0, 1.0]
    assert holm([0.9, 0.8, 0.95]) == [1.0, 1.0, 1.0]
    assert holm([]) == [] and holm([None]) == [None]
    assert holm([0.02]) == [0.02]
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def test_compare_to_reference_matches_scipy_and_adjusts_over_arms() -> None:
    per_seed = {
        "baseline": {0: 70.1, 1: 71.3, 2: 69.8, 3: 70.6},
        "bissl": {0: 71.0, 1: 71.9, 2: 70.9, 3: 70.8},
        "first-order": {0: 69.0, 1: 71.0, 2: 68.7, 3: 70.9},
        "late": {2: 70.4, 3: 71.6, 7: 99.0},
    }
    results = compare_to_reference(per_seed, "baseline")
    assert set(results) == {"bissl", "first-order", "late"}
    assert results["late"]["seeds"] == [2, 3] and results["late"]["n"] == 2
    for arm, entry in results.items():
        seeds = entry["seeds"]
        base = np.array([per_seed["baseline"][s] for s in seeds])
        other = np.array([per_seed[arm][s] for s in seeds])
        difference = other - base
        assert entry["mean_difference"] == pytest.approx(difference.mean())
        low, high = stats.t.interval(0.95, len(seeds) - 1, loc=difference.mean(), scale=stats.sem(difference))
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((low, high))
        assert entry["t_pvalue"] == pytest.approx(stats.ttest_rel(other, base).pvalue)
        assert entry["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(other, base).pvalue)
    raw = [results[arm]["t_pvalue"] for arm in results]
    assert [results[arm]["t_pvalue_holm"] for arm in results] == pytest.approx(holm(raw))
    raw_w = [results[arm]["wilcoxon_pvalue"] for arm in results]
    assert [results[arm]["wilcoxon_pvalue_holm"] for arm in results] == pytest.approx(holm(raw_w))
    assert results["bissl"]["t_pvalue_holm"] >= results["bissl"]["t_pvalue"]


def test_minimal_detectable_effect_has_the_asked_power() -> None:
    from bissl.eval.stats import minimal_detectable_effect

    effect = minimal_detectable_effect(0.5, 10, alpha=0.025, power=0.8)
    critical = stats.t.ppf(0.975, 9)
    assert stats.nct.sf(critical, 9, effect * math.sqrt(10) / 0.5) == pytest.approx(0.8, abs=1e-6)
    # The normal approximation (z quantiles) is a little smaller; the t one with df n - 1 a little larger.
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 0.5 / math.sqrt(10)
    assert normal < effect < (stats.t.ppf(0.975, 9) + stats.t.ppf(0.8, 9)) * 0.5 / math.sqrt(10) + 0.05
    assert minimal_detectable_effect(0.5, 40, alpha=0.025) < effect
