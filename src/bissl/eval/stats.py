"""Statistics over seeds: mean ± std per arm and a paired comparison of two arms (docs/method.md: Evaluation).

Runs are paired by seed: a[i] and b[i] share the seed (and everything else but the arm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_floats(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """One-dimensional float64 array of finite values, at least one."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} needs at least one value")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite values: {array.tolist()}")
    return array


def _finite_or_none(value: float) -> float | None:
    """The value as a float, or None when it is NaN (a test that is undefined for the data)."""
    return None if math.isnan(value) else float(value)


def summarize(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """{"mean", "std", "n", "values"}: the sample std (ddof=1) when n > 1, else 0."""
    array = _as_floats(values, "summarize")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": int(array.size), "values": array.tolist()}


def format_summary(summary: dict[str, Any], digits: int = 2) -> str:
    """ "mean ± std (n=...)" for tables."""
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f} (n={summary['n']})"


def paired_comparison(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> dict[str, Any]:
    """Compare arm b with arm a over paired seeds: mean difference b − a, its t-interval and two p-values.

    Returns "mean_difference", "std_difference" (ddof=1), "ci_low"/"ci_high" (Student-t interval at
    ``confidence``, also returned), "t_pvalue" (two-sided paired t-test, scipy.stats.ttest_rel),
    "t_pvalue_greater" (the one-sided paired t-test of b > a),
    "wilcoxon_pvalue" (two-sided signed-rank test, scipy.stats.wilcoxon, zero differences dropped) and "n".
    The interval is None when n < 2; the t p-value is None when n < 2 or all differences are equal (no
    spread: the t statistic is undefined or infinite); the Wilcoxon p-value is None when n < 2 or all
    differences are zero.
    """
    from scipy import stats

    first, second = _as_floats(a, "paired_comparison a"), _as_floats(b, "paired_comparison b")
    if first.shape != second.shape:
        raise ValueError(f"paired_comparison needs equally many values, got {first.size} and {second.size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    differences = second - first
    count = int(differences.size)
    result: dict[str, Any] = {
        "mean_difference": float(differences.mean()),
        "std_difference": float(differences.std(ddof=1)) if count > 1 else 0.0,
        "ci_low": None,
        "ci_high": None,
        "t_pvalue": None,
        "t_pvalue_greater": None,
        "wilcoxon_pvalue": None,
        "n": count,
        "confidence": confidence,
    }
    if count < 2:
        return result
    half_width = stats.t.ppf(0.5 + confidence / 2, df=count - 1) * result["std_difference"] / math.sqrt(count)
    result["ci_low"] = result["mean_difference"] - float(half_width)
    result["ci_high"] = result["mean_difference"] + float(half_width)
    if result["std_difference"] > 0:
        result["t_pvalue"] = _finite_or_none(float(stats.ttest_rel(second, first).pvalue))
        greater = stats.ttest_rel(second, first, alternative="greater").pvalue
        result["t_pvalue_greater"] = _finite_or_none(float(greater))
    if np.any(differences != 0):
        result["wilcoxon_pvalue"] = _finite_or_none(float(stats.wilcoxon(second, first).pvalue))
    return result


def minimal_detectable_effect(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean paired difference that a one-sided paired t-test at level ``alpha`` over ``n``
    pairs with difference SD ``sd`` detects with probability ``power`` (exact, noncentral t)."""
    from scipy import optimize, stats

    if n < 2 or sd <= 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(
            f"need n >= 2, sd > 0, alpha and power in (0, 1); got n={n}, sd={sd}, {alpha}, {power}"
        )
    critical = stats.t.ppf(1 - alpha, df=n - 1)

    def shortfall(effect: float) -> float:
        return float(stats.nct.sf(critical, df=n - 1, nc=effect * math.sqrt(n) / sd)) - power

    return float(optimize.brentq(shortfall, 0.0, 20.0 * sd))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of ``pvalues`` for multiple comparisons (family-wise error control).

    With the m given (non-None) p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of the i-th
    smallest is max over j ≤ i of min(1, (m − j + 1) · p_(j)): monotone in the raw order and capped at 1.
    None entries (a test that is undefined for its data) stay None and do not count towards m. The result
    is in the input's order.
    """
    present = [(index, float(value)) for index, value in enumerate(pvalues) if value is not None]
    for _, value in present:
        if not 0 <= value <= 1 or math.isnan(value):
            raise ValueError(f"holm needs p-values in [0, 1], got {value}")
    adjusted: list[float | None] = [None] * len(pvalues)
    count = len(present)
    running = 0.0
    for rank, (index, value) in enumerate(sorted(present, key=lambda item: item[1])):
        running = max(running, min(1.0, (count - rank) * value))
        adjusted[index] = running
    return adjusted


def compare_to_reference(
    per_seed: dict[str, dict[int, float]], reference: str, confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Every arm against ``reference`` over the pipeline seeds both have: ``paired_comparison`` of the
    per-seed values (arm − reference), plus Holm-adjusted t and Wilcoxon p-values over the arms compared.

    ``per_seed`` maps arm -> {pipeline seed: value (for instance the mean over that seed's fine-tuning
    runs)}. Arms with no seed in common with the reference are left out; the reference itself is not compared.
    """
    base = per_seed.get(reference, {})
    results: dict[str, dict[str, Any]] = {}
    for arm, values in per_seed.items():
        if arm == reference:
            continue
        common = sorted(set(values) & set(base))
        if not common:
            continue
        paired = paired_comparison([base[s] for s in common], [values[s] for s in common], confidence)
        results[arm] = paired | {"seeds": common}
    arms = list(results)
    for key in ("t_pvalue", "wilcoxon_pvalue"):
        for arm, value in zip(arms, holm([results[a][key] for a in arms]), strict=True):
            results[arm][key.replace("_pvalue", "_pvalue_holm")] = value
    return results
