"""The outcome sections: the summary sentence, the results table, per-seed values and the paired statistics."""

from __future__ import annotations

import itertools

from bissl.report.figures import arm_colour, figure_html, new_figure, style_axis
from bissl.report.markup import (
    count_text,
    fixed_text,
    general_text,
    interval_text,
    mean_std_text,
    note_html,
    pvalue_text,
    signed_text,
    table_html,
)
from bissl.report.results import (
    ARM_ORDER,
    arm_label,
    as_number,
    interval,
    metric_label,
    metric_summary,
    ordered_arms,
    primary_metric_key,
    reported_metrics,
    seed_values,
)
from bissl.report.schema import CompareResults

# The signed-rank test cannot reach a two-sided p below 0.05 with fewer paired seeds than this.
SMALL_SAMPLE_SEEDS = 6


def summary_sentence(results: CompareResults) -> str:
    """One plain-text sentence: which arm won on the primary metric, by how much, how sure we can be."""
    primary = primary_metric_key(results)
    label = metric_label(primary)
    arms = ordered_arms(results)
    if not ("baseline" in arms and "bissl" in arms):
        only = next(iter(arms))
        summary = metric_summary(arms[only], primary)
        return (
            f"Only the {arm_label(only)} arm ran, so there is no comparison: its {label} is "
            f"{mean_std_text(summary)} over {count_text(summary['n'])} seeds."
        )
    entry = results["comparison"].get(primary)
    difference = None if entry is None else as_number(entry["mean_difference"])
    if entry is None or difference is None:
        return (
            f"No paired comparison on {label} was recorded: BiSSL reached "
            f"{mean_std_text(metric_summary(arms['bissl'], primary))} and the baseline "
            f"{mean_std_text(metric_summary(arms['baseline'], primary))} (mean ± std over seeds)."
        )
    seeds = as_number(entry["n"])
    low, high = interval(entry["ci95"])
    if difference > 0:
        lead = f"BiSSL beat the baseline on {label} by {abs(difference):.2f} points"
    elif difference < 0:
        lead = f"The baseline beat BiSSL on {label} by {abs(difference):.2f} points"
    else:
        lead = f"BiSSL and the baseline tied on {label}"
    details = (
        f" (mean paired difference BiSSL − baseline {difference:+.2f}; 95% CI {interval_text(low, high)}; "
        f"paired t-test p = {pvalue_text(entry['t_pvalue'])}, "
        f"Wilcoxon p = {pvalue_text(entry['wilcoxon_pvalue'])}; "
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


def results_section(results: CompareResults) -> str:
    metrics = reported_metrics(results)
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
        search = arm["search"]
        best = search["best"]
        seeds = count_text(metric_summary(arm, metrics[0])["n"])
        if seeds == "n/a" and arm["seeds"]:
            seeds = str(len(arm["seeds"]))
        rows.append(
            [
                arm_label(name),
                arm["backbone"] or "n/a",
                *[mean_std_text(metric_summary(arm, metric)) for metric in metrics],
                seeds,
                general_text(best.get("lr")),
                general_text(best.get("weight_decay")),
                fixed_text(best.get("value")),
                str(len(search["trials"])),
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


def per_seed_section(results: CompareResults) -> str:
    arms = ordered_arms(results)
    panels = [
        metric
        for metric in reported_metrics(results)
        if any(seed_values(arm, metric) for arm in arms.values())
    ]
    if not panels:
        return note_html("No per-seed test metric was recorded.")
    figure, axes = new_figure(0.8 + 3.0 * len(panels), 3.6, columns=len(panels))
    names = list(arms)
    for axis, metric in zip(axes, panels):
        values = {name: seed_values(arm, metric) for name, arm in arms.items()}
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


def statistics_section(results: CompareResults) -> str:
    comparison = results["comparison"]
    if not comparison:
        return note_html("No paired comparison was recorded (it needs both arms).")
    primary = primary_metric_key(results)
    metrics = ([primary] if primary in comparison else []) + [key for key in comparison if key != primary]
    rows = []
    for metric in metrics:
        entry = comparison[metric]
        rows.append(
            [
                metric_label(metric),
                count_text(entry["n"]),
                signed_text(entry["mean_difference"]),
                interval_text(*interval(entry["ci95"])),
                pvalue_text(entry["t_pvalue"]),
                pvalue_text(entry["wilcoxon_pvalue"]),
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


def format_compare_table(results: CompareResults) -> str:
    """The short plain-text table printed at the end of ``bissl compare`` (and shown in the README)."""
    metric = primary_metric_key(results)
    lines = [
        f"{'arm':<10} {'test ' + results['primary_metric'] + ' (mean ± std)':<26} {'k-NN':>7} {'probe':>7}  lr / wd"
    ]
    arms = results["arms"]
    for name in ARM_ORDER:
        if name not in arms:
            continue
        summary = metric_summary(arms[name], metric)
        probe = results["probes"].get(name, {})
        best = arms[name]["search"]["best"]
        mean, std = summary["mean"], summary["std"]
        cell = f"{mean:.2f} ± {std or 0.0:.2f} (n={summary['n']})" if mean is not None else "n/a"
        knn = probe.get("knn_top1")
        linear = probe.get("probe_top1") if probe.get("probe_top1") is not None else probe.get("probe_map")
        lines.append(
            f"{name:<10} {cell:<26} {_plain_number(knn, '.2f'):>7} {_plain_number(linear, '.2f'):>7}"
            f"  {_plain_number(best.get('lr'), '.3g')} / {_plain_number(best.get('weight_decay'), '.3g')}"
        )
    difference = results["comparison"].get(metric)
    if difference is not None and difference["mean_difference"] is not None:
        low, high = interval(difference["ci95"])
        lines.append(
            f"BiSSL − baseline: {difference['mean_difference']:+.2f} (95% CI {_plain_number(low, '+.2f')} … "
            f"{_plain_number(high, '+.2f')}, paired t p={_plain_number(difference['t_pvalue'], '.3g')}, "
            f"Wilcoxon p={_plain_number(difference['wilcoxon_pvalue'], '.3g')})"
        )
    return "\n".join(lines)


def _plain_number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
