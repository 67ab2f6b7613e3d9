"""The outcome sections: the summary sentence, the results table, per-seed values and the paired statistics."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from bissl.report.figures import arm_colour, figure_html, new_figure, style_axis
from bissl.report.markup import (
    _interval_text,
    _mean_std,
    count_text,
    fixed_text,
    general_text,
    note_html,
    pvalue_text,
    signed_text,
    table_html,
)
from bissl.report.results import (
    _interval,
    _metric_summary,
    _seed_values,
    _test_metrics,
    arm_label,
    as_list,
    as_mapping,
    as_number,
    metric_label,
    ordered_arms,
    primary_metric_key,
)

# The signed-rank test cannot reach a two-sided p below 0.05 with fewer paired seeds than this.
SMALL_SAMPLE_SEEDS = 6


def summary_sentence(results: Mapping[str, Any]) -> str:
    """One plain-text sentence: which arm won on the primary metric, by how much, how sure we can be."""
    primary = primary_metric_key(results)
    label = metric_label(primary)
    arms = ordered_arms(results)
    if not ("baseline" in arms and "bissl" in arms):
        only = next(iter(arms))
        summary = _metric_summary(arms[only], primary)
        return (
            f"Only the {arm_label(only)} arm ran, so there is no comparison: its {label} is "
            f"{_mean_std(summary)} over {count_text(summary.get('n'))} seeds."
        )
    entry = as_mapping(as_mapping(results.get("comparison")).get(primary))
    difference = as_number(entry.get("mean_difference"))
    if difference is None:
        return (
            f"No paired comparison on {label} was recorded: BiSSL reached "
            f"{_mean_std(_metric_summary(arms['bissl'], primary))} and the baseline "
            f"{_mean_std(_metric_summary(arms['baseline'], primary))} (mean ± std over seeds)."
        )
    seeds = as_number(entry.get("n"))
    low, high = _interval(entry.get("ci95"))
    if difference > 0:
        lead = f"BiSSL beat the baseline on {label} by {abs(difference):.2f} points"
    elif difference < 0:
        lead = f"The baseline beat BiSSL on {label} by {abs(difference):.2f} points"
    else:
        lead = f"BiSSL and the baseline tied on {label}"
    details = (
        f" (mean paired difference BiSSL − baseline {difference:+.2f}; 95% CI {_interval_text(low, high)}; "
        f"paired t-test p = {pvalue_text(entry.get('t_pvalue'))}, "
        f"Wilcoxon p = {pvalue_text(entry.get('wilcoxon_pvalue'))}; "
        f"n = {count_text(seeds)} paired seeds)"
    )
    small = seeds is not None and seeds < SMALL_SAMPLE_SEEDS
    if low is None or high is None:
        remark = ", but with no interval (it needs two or more paired seeds) this is no evidence either way"
    elif low <= 0 <= high and small:
        remark = (
            f", but with only {count_text(seeds)} seeds and an interval that includes 0 the difference is "
            "indistinguishable from seed-to-seed noise"
        )
    elif low <= 0 <= high:
        remark = ", but the interval includes 0, so the difference is not significant at the 5% level"
    elif small:
        remark = (
            f"; the interval excludes 0, but with only {count_text(seeds)} seeds (the signed-rank test cannot go "
            f"below p = 0.05 with fewer than {SMALL_SAMPLE_SEEDS}) treat it as preliminary"
        )
    else:
        remark = "; the interval excludes 0"
    return lead + details + remark + "."


def results_section(results: Mapping[str, Any]) -> str:
    metrics = _test_metrics(results)
    headers = [
        "Arm",
        "Backbone",
        *[metric_label(metric) for metric in metrics],
        "Seeds",
        "Chosen lr",
        "Chosen wd",
        "Best validation",
        "Trials",
    ]
    rows = []
    for name, arm in ordered_arms(results).items():
        search = as_mapping(arm.get("search"))
        best = as_mapping(search.get("best"))
        seeds = count_text(_metric_summary(arm, metrics[0]).get("n"))
        if seeds == "n/a" and isinstance(arm.get("seeds"), list):
            seeds = str(len(arm["seeds"]))
        rows.append(
            [
                arm_label(name),
                str(arm.get("backbone", "n/a")),
                *[_mean_std(_metric_summary(arm, metric)) for metric in metrics],
                seeds,
                general_text(best.get("lr")),
                general_text(best.get("weight_decay")),
                fixed_text(best.get("value")),
                str(len(as_list(search.get("trials")))),
            ]
        )
    numeric = [False, False, *[True] * (len(headers) - 2)]
    return (
        table_html(headers, rows, numeric)
        + "\n"
        + note_html(
            "Test metrics in percent, mean ± sample std over seeds; lr and weight decay from the search."
        )
    )


def per_seed_section(results: Mapping[str, Any]) -> str:
    arms = ordered_arms(results)
    panels = [
        metric for metric in _test_metrics(results) if any(_seed_values(arm, metric) for arm in arms.values())
    ]
    if not panels:
        return note_html("No per-seed test metric was recorded.")
    figure, axes = new_figure(0.8 + 3.0 * len(panels), 3.6, columns=len(panels))
    names = list(arms)
    for axis, metric in zip(axes, panels):
        values = {name: _seed_values(arm, metric) for name, arm in arms.items()}
        for left, right in itertools.pairwise(names):
            for seed in sorted(values[left].keys() & values[right].keys()):
                x_left, x_right = names.index(left), names.index(right)
                axis.plot(
                    [x_left, x_right],
                    [values[left][seed], values[right][seed]],
                    color="#999999",
                    lw=0.9,
                    zorder=1,
                )
        for position, name in enumerate(names):
            points = list(values[name].values())
            if not points:
                continue
            colour = arm_colour(name, position)
            axis.scatter([position] * len(points), points, s=36, color=colour, zorder=3, edgecolors="white")
            mean = sum(points) / len(points)
            axis.hlines(mean, position - 0.18, position + 0.18, colors=colour, lw=2.5, zorder=2)
        axis.set_xticks(range(len(names)), [arm_label(name) for name in names])
        axis.set_xlim(-0.5, len(names) - 0.5)
        style_axis(axis, metric_label(metric), "")
    return figure_html(
        figure,
        "per-seed test metrics of each arm",
        "One dot per seed; grey lines join the same seed across arms; bars mark the means.",
    )


def statistics_section(results: Mapping[str, Any]) -> str:
    comparison = as_mapping(results.get("comparison"))
    if not comparison:
        return note_html("No paired comparison was recorded (it needs both arms).")
    primary = primary_metric_key(results)
    metrics = ([primary] if primary in comparison else []) + [key for key in comparison if key != primary]
    rows = []
    for metric in metrics:
        entry = as_mapping(comparison[metric])
        rows.append(
            [
                metric_label(metric),
                count_text(entry.get("n")),
                signed_text(entry.get("mean_difference")),
                _interval_text(*_interval(entry.get("ci95"))),
                pvalue_text(entry.get("t_pvalue")),
                pvalue_text(entry.get("wilcoxon_pvalue")),
            ]
        )
    headers = ["Metric", "Paired seeds", "Mean difference", "95% CI", "Paired t-test p", "Wilcoxon p"]
    return (
        table_html(headers, rows, [False, True, True, True, True, True])
        + "\n"
        + note_html(
            "Differences are BiSSL − baseline in points, paired by seed; positive favours BiSSL. "
            "The interval is Student-t; both tests are two-sided."
        )
    )
