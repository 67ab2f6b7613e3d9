"""The study's report: report.html in the study folder, with a forest plot of every arm's difference from the
reference arm, per-seed dots, and each arm's cost; the conclusion is stated in plain words whatever its sign.
Its sentences, tables and figure are also what docs/evidence.md is written from (``bissl.report.evidence``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bissl.report.figures import figure_html, new_figure
from bissl.report.markup import (
    STYLE,
    duration_text,
    escape,
    fixed_text,
    note_html,
    pvalue_text,
    section_html,
    signed_text,
    table_html,
)
from bissl.report.results import as_number
from bissl.report.schema import (
    RESULTS_FILE,
    Hypothesis,
    PairedDifference,
    ReferenceDifference,
    SeedStatistics,
    StudyArmResults,
    StudyResults,
    StudySeed,
    load_study_results,
    seed_value,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.html"
ALPHA = 0.05
METRIC: Final = "test_top1"
SHARED_METRIC: Final = "test_top1_shared"


def secondary_key(results: StudyResults) -> str:
    """The fine-tuning statistic of the secondary comparisons: at the reference's setting in a study with
    shared hyper-parameters, else after each arm's own search."""
    return SHARED_METRIC if results["shared_hyperparameters"] else METRIC


def _comparison(results: StudyResults, key: str | None = None) -> dict[str, ReferenceDifference]:
    return dict(results["comparison"].get(key or secondary_key(results), {}))


def primary_lines(results: StudyResults) -> list[str]:
    """The pre-registered hypotheses in plain words: estimate, 95% CI, one-sided p (raw and Holm over the
    hypotheses), the number of pipeline seeds and the decision at alpha, whatever the sign."""
    primary = results["primary"]
    tests = primary["tests"]
    if not tests:
        return []
    alpha = primary["alpha"] if primary["alpha"] is not None else ALPHA
    statistic = (
        "at the reference arm's chosen setting"
        if primary["statistic"] == SHARED_METRIC
        else "after each arm's own search"
    )
    lines = []
    for name, entry in tests.items():
        adjusted = as_number(entry["t_pvalue_greater_holm"])
        decided = adjusted is not None and adjusted < alpha
        lines.append(
            f"{name}: {entry['arm']} > {entry['against']} (fine-tuned test top-1 {statistic}): "
            f"{signed_text(entry['mean_difference'])} points (95% CI {signed_text(entry['ci_low'])} … "
            f"{signed_text(entry['ci_high'])}), one-sided paired t p = {pvalue_text(entry['t_pvalue_greater'])}, "
            f"Holm over the {len(tests)} hypotheses p = {pvalue_text(adjusted)}, n = {entry['n']} pipeline "
            f"seeds: {'supported' if decided else 'not supported'} at α = {alpha}."
        )
    return lines


def _kind(arm: StudyArmResults) -> str:
    spec = arm["spec"]
    if spec["init"] == "random":
        return "random"
    if spec["bilevel"]:
        return "bilevel"
    if spec["extra_pretext"]:
        return "matched"
    return "pretrained"


def _verdict(entry: Mapping[str, object]) -> str:
    """'better', 'worse' or 'unclear': whether the 95% CI of the difference lies above, below or around 0."""
    low, high = as_number(entry.get("ci_low")), as_number(entry.get("ci_high"))
    if low is not None and low > 0:
        return "better"
    if high is not None and high < 0:
        return "worse"
    return "unclear"


def _holm_p(entry: ReferenceDifference) -> float:
    """The Holm-adjusted paired t p-value, 1 when undefined (so it never counts as significant)."""
    value = as_number(entry["t_pvalue_holm"])
    return 1.0 if value is None else value


def _difference_text(entry: ReferenceDifference) -> str:
    return (
        f"{signed_text(entry['mean_difference'])} points (95% CI {signed_text(entry['ci_low'])} … "
        f"{signed_text(entry['ci_high'])}, Holm-adjusted paired t p = {pvalue_text(entry['t_pvalue_holm'])})"
    )


def _cost_ratio(results: StudyResults, name: str) -> float | None:
    arms = results["arms"]
    own = as_number(arms[name]["seconds_per_seed"]) if name in arms else None
    reference = arms.get(results["reference"])
    base = as_number(reference["seconds_per_seed"]) if reference is not None else None
    return own / base if own is not None and base else None


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}×"


def status_line(results: StudyResults) -> str:
    finished, expected = results["finished_runs"] or 0, results["expected_runs"] or 0
    if results["complete"]:
        return f"Complete: {finished} of {expected} arm × pipeline-seed runs."
    return (
        f"PARTIAL: {finished} of {expected} arm × pipeline-seed runs have finished; the numbers below cover "
        "those only and change as the study continues."
    )


def _or_lowest(value: float | None) -> float:
    """A number to rank by, with a missing one below every real one (a difference of 0.0 is not missing)."""
    return -math.inf if value is None else value


def headline(results: StudyResults) -> str:
    """The study's result in one line: the BiSSL arm with the largest mean gain, its interval, Holm-adjusted
    p-value and cost, how many BiSSL arms beat the reference, and the gain against matched extra pretext steps."""
    reference = results["reference"]
    compared = _comparison(results)
    bilevel = [n for n, arm in results["arms"].items() if _kind(arm) == "bilevel" and n in compared]
    if not bilevel:
        return "No BiSSL arm has finished yet."
    best = max(bilevel, key=lambda n: _or_lowest(as_number(compared[n]["mean_difference"])))
    winners = [n for n in bilevel if _verdict(compared[n]) == "better"]
    significant = [n for n in winners if _holm_p(compared[n]) < ALPHA]
    text = (
        f"Largest BiSSL gain: {best} − {reference} = {_difference_text(compared[best])} at "
        f"{_ratio_text(_cost_ratio(results, best))} the cost; {len(winners)} of {len(bilevel)} BiSSL arms have a "
        f"95% CI above 0, {len(significant)} after Holm's correction"
    )
    entry = results["versus_matched"]["test_top1"].get(best)
    if entry is not None:
        text += (
            f"; against the same number of extra pretext steps {best} is "
            f"{signed_text(entry['mean_difference'])} points (95% CI {signed_text(entry['ci_low'])} … "
            f"{signed_text(entry['ci_high'])})"
        )
    return text + "."


def conclusion(results: StudyResults) -> list[str]:
    """The study's findings as plain sentences: the testbed check, which BiSSL arms beat the reference and by
    how much at what cost, whether a gain is matched by extra pretext steps, and the BatchNorm control."""
    reference = results["reference"]
    arms = results["arms"]
    compared = _comparison(results)
    lines: list[str] = []
    for name, arm in arms.items():
        if _kind(arm) == "random" and name in compared:
            lines.append(
                f"Testbed check: random initialisation − {reference} = {_difference_text(compared[name])}."
            )
    bilevel = [name for name, arm in arms.items() if _kind(arm) == "bilevel" and name in compared]
    if not bilevel:
        lines.append("No BiSSL arm has finished a pipeline seed that pairs with the reference yet.")
        return lines
    winners = [name for name in bilevel if _verdict(compared[name]) == "better"]
    losers = [name for name in bilevel if _verdict(compared[name]) == "worse"]
    for name in bilevel:
        lines.append(
            f"{name} − {reference}: {_difference_text(compared[name])}; cost "
            f"{_ratio_text(_cost_ratio(results, name))} the reference's per pipeline seed."
        )
    significant = [name for name in winners if _holm_p(compared[name]) < ALPHA]
    if winners:
        lines.append(
            f"Beat {reference} (95% CI above 0): {', '.join(winners)}"
            + (
                f"; after Holm's correction over the arms at {ALPHA}: {', '.join(significant)}."
                if significant
                else f"; none of them stays below {ALPHA} after Holm's correction over the arms."
            )
        )
    else:
        known = [v for n in bilevel if (v := as_number(compared[n]["mean_difference"])) is not None]
        lowest, highest = (min(known), max(known)) if known else (math.nan, math.nan)
        lines.append(
            f"No BiSSL arm beat {reference}: mean differences ranged from {lowest:+.2f} to {highest:+.2f} "
            "points and no 95% CI lies above 0"
            + (f"; worse than {reference} (CI below 0): {', '.join(losers)}." if losers else ".")
        )
    for name, arm in arms.items():
        if _kind(arm) == "matched" and name in compared:
            lines.append(
                f"Matched compute, {name} − {reference}: {_difference_text(compared[name])}; cost "
                f"{_ratio_text(_cost_ratio(results, name))}."
            )
    versus = results["versus_matched"]
    matched_name = versus["reference"]
    for name in winners:
        entry = versus["test_top1"].get(name)
        if entry is None:
            continue
        if _verdict(entry) == "better":
            lines.append(
                f"{name}'s gain exceeds that of the same number of extra pretext steps ({matched_name}): "
                f"{name} − {matched_name} = {_difference_text(entry)}."
            )
        else:
            lines.append(
                f"{name}'s gain is not distinguishable from that of extra pretext steps alone ({matched_name}): "
                f"{name} − {matched_name} = {_difference_text(entry)}."
            )
    lines.extend(_bn_lines(results, bilevel))
    return lines


def _bn_lines(results: StudyResults, bilevel: Sequence[str]) -> list[str]:
    """What recalibrating BatchNorm statistics alone does to k-NN, beside what the BiSSL arms do, and whether
    each BiSSL arm's k-NN exceeds the control's (paired over pipeline seeds, from results.json's per-seed
    values)."""
    knn = _comparison(results, "knn_top1")
    controls = results["controls"]
    control = next(iter(controls), None)
    if control is None or control not in knn:
        return []
    shift = as_number(knn[control]["mean_difference"])
    moved = {name: as_number(knn[name]["mean_difference"]) for name in bilevel if name in knn}
    text = ", ".join(f"{name} {signed_text(value)}" for name, value in moved.items())
    line = (
        f"Alignment: recalibrating the reference backbone's BatchNorm statistics on downstream data (the head "
        f"warm-up, no weight change) moves k-NN top-1 by {signed_text(shift)} points "
        f"(95% CI {signed_text(knn[control]['ci_low'])} … {signed_text(knn[control]['ci_high'])}); "
        f"the BiSSL arms move it by {text or 'n/a'}."
    )
    per_seed = {control: _seed_values(controls[control]["seeds"], "knn_top1")}
    for name in moved:
        per_seed[name] = _seed_values(results["arms"][name]["seeds"], "knn_top1")
    from bissl.eval.stats import compare_to_reference  # deferred: bissl.eval loads torch

    versus = compare_to_reference(per_seed, control)
    beyond = [name for name, entry in versus.items() if _verdict(entry) == "better"]
    if versus:
        line += (
            f" k-NN above the BatchNorm control (paired 95% CI above 0): {', '.join(beyond)}."
            if beyond
            else " No BiSSL arm's k-NN is distinguishable from the BatchNorm control's (every paired 95% CI "
            "includes 0 or is undefined)."
        )
    return [line]


def _seed_values(seeds: dict[str, StudySeed], key: str) -> dict[int, float]:
    """{pipeline seed: value} of one arm or control."""
    values = {}
    for seed, entry in seeds.items():
        number = as_number(seed_value(entry, key))
        if number is not None:
            values[int(seed)] = number
    return values


def table_rows(results: StudyResults, key: str | None = None) -> list[list[str]]:
    """One row per arm (and the BatchNorm control): accuracy, difference, p-values, alignment, cost.

    ``key`` is the fine-tuning statistic (default: the secondary one); arms without it are left out. The
    primary arm's row of the primary statistic carries its H1 test (one-sided, Holm over the hypotheses)."""
    key = key or secondary_key(results)
    reference = results["reference"]
    compared, knn, probe = (_comparison(results, k) for k in (key, "knn_top1", "probe_top1"))
    primary = results["primary"]
    h1 = primary["tests"].get("H1")
    if primary["statistic"] == key and h1 is not None:
        compared[str(primary["arm"])] = _as_secondary(h1)
    rows = []
    for name, arm in results["arms"].items():
        summary = arm["summary"].get(key)
        if not summary:
            continue
        entry = compared.get(name)
        if name == reference:
            difference = ["reference", "", "", ""]
        else:
            difference = [
                signed_text(entry["mean_difference"] if entry else None),
                _ci_text(entry),
                pvalue_text(entry["t_pvalue_holm"] if entry else None),
                pvalue_text(entry["wilcoxon_pvalue_holm"] if entry else None),
            ]
        rows.append(
            [
                name,
                _mean_std(summary),
                *difference,
                _summary_mean(arm["summary"], "knn_top1"),
                "" if name == reference else _difference(knn, name),
                _summary_mean(arm["summary"], "probe_top1"),
                "" if name == reference else _difference(probe, name),
                duration_text(arm["seconds_per_seed"]),
                _ratio_text(_cost_ratio(results, name)),
            ]
        )
    for name, control in results["controls"].items():
        rows.append(
            [
                f"{name} ({control['of']}, alignment only)",
                "",
                "",
                "",
                "",
                "",
                _summary_mean(control["summary"], "knn_top1"),
                _difference(knn, name),
                _summary_mean(control["summary"], "probe_top1"),
                _difference(probe, name),
                "",
                "",
            ]
        )
    return rows


def _as_secondary(test: Hypothesis) -> ReferenceDifference:
    """A primary hypothesis's test in the form of a row of the secondary table: its one-sided p-value,
    Holm-adjusted over the hypotheses, in the place of the two-sided Holm-adjusted one; no Wilcoxon."""
    return {
        "n": test["n"],
        "mean_difference": test["mean_difference"],
        "ci_low": test["ci_low"],
        "ci_high": test["ci_high"],
        "t_pvalue": test["t_pvalue"],
        "t_pvalue_greater": test["t_pvalue_greater"],
        "wilcoxon_pvalue": test["wilcoxon_pvalue"],
        "seeds": test["seeds"],
        "t_pvalue_holm": test["t_pvalue_greater_holm"],
        "wilcoxon_pvalue_holm": None,
    }


def _summary_mean(summary: dict[str, SeedStatistics], key: str) -> str:
    statistics = summary.get(key)
    return fixed_text(statistics["mean"] if statistics else None)


def _difference(compared: dict[str, ReferenceDifference], name: str) -> str:
    entry = compared.get(name)
    return signed_text(entry["mean_difference"] if entry else None)


HEADERS = [
    "arm",
    "test top-1 (mean ± std over pipeline seeds)",
    "Δ vs reference",
    "95% CI",
    "t p (Holm)",
    "Wilcoxon p (Holm)",
    "k-NN",
    "Δ k-NN",
    "probe",
    "Δ probe",
    "time per seed",
    "cost vs reference",
]
NUMERIC = [False, True, True, True, True, True, True, True, True, True, True, True]


def _mean_std(summary: SeedStatistics) -> str:
    mean, std, count = as_number(summary["mean"]), as_number(summary["std"]), summary["n"]
    return "n/a" if mean is None else f"{mean:.2f} ± {std or 0.0:.2f} (n={count})"


def _ci_text(entry: PairedDifference | None) -> str:
    if entry is None:
        return "n/a"
    low, high = as_number(entry["ci_low"]), as_number(entry["ci_high"])
    return "n/a" if low is None or high is None else f"{low:+.2f} … {high:+.2f}"


def format_table(results: StudyResults) -> str:
    """The table as aligned plain text (printed at the end of ``bissl study``)."""
    rows = [HEADERS, *table_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([status_line(results), *lines, *conclusion(results)])


def forest_figure(results: StudyResults) -> Figure:
    """Three panels: test top-1 difference from the reference (mean, 95% CI, per-seed dots), the k-NN
    difference (BatchNorm control included), and each arm's wall time per pipeline seed."""
    reference = results["reference"]
    arms = results["arms"]
    names = [name for name in arms if name != reference]
    controls = list(results["controls"])
    height = 1.2 + 0.42 * max(1, len(names) + len(controls))
    figure, (accuracy, knn, cost) = new_figure(14.0, height, columns=3)
    figure.subplots_adjust(left=0.13, right=0.98, wspace=0.8)
    for axis, key, rows, title in (
        (accuracy, METRIC, names, f"fine-tuned test top-1 − {reference}"),
        (knn, "knn_top1", [*names, *controls], f"frozen k-NN top-1 − {reference}"),
    ):
        compared = _comparison(results, key)
        for position, name in enumerate(rows):
            entry = compared.get(name)
            if entry is None:
                continue
            mean = as_number(entry["mean_difference"])
            low, high = as_number(entry["ci_low"]), as_number(entry["ci_high"])
            if low is not None and high is not None and mean is not None:
                axis.errorbar(
                    [mean],
                    [position],
                    xerr=[[mean - low], [high - mean]],
                    fmt="o",
                    color="#4c72b0",
                    capsize=3,
                )
            elif mean is not None:
                axis.plot([mean], [position], "o", color="#4c72b0")
            dots = _seed_differences(results, key, name)
            axis.plot(dots, [position] * len(dots), "x", color="#dd8452", alpha=0.8)
        axis.axvline(0.0, color="#888", linewidth=1)
        axis.set_yticks(range(len(rows)), rows, fontsize=8)
        axis.set_ylim(len(rows) - 0.5, -0.5)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("points (mean, 95% CI; × = pipeline seeds)")
        axis.grid(True, axis="x", alpha=0.3)
    seconds = [(as_number(arm["seconds_per_seed"]) or 0.0) / 60 for arm in arms.values()]
    cost.barh(range(len(arms)), seconds, color="#55a868")
    cost.set_yticks(range(len(arms)), list(arms), fontsize=8)
    cost.set_ylim(len(arms) - 0.5, -0.5)
    cost.set_title("wall time per pipeline seed", fontsize=10)
    cost.set_xlabel("minutes")
    cost.grid(True, axis="x", alpha=0.3)
    return figure


def _seed_differences(results: StudyResults, key: str, name: str) -> list[float]:
    """Per pipeline seed: the arm's (or control's) value minus the reference's."""
    arms, controls = results["arms"], results["controls"]
    reference = arms[results["reference"]]["seeds"] if results["reference"] in arms else {}
    seeds = arms[name]["seeds"] if name in arms else controls[name]["seeds"] if name in controls else {}
    differences = []
    for seed, values in seeds.items():
        own = as_number(seed_value(values, key))
        base = as_number(seed_value(reference[seed], key)) if seed in reference else None
        if own is not None and base is not None:
            differences.append(own - base)
    return differences


def render_study_report(results: StudyResults) -> str:
    """The HTML report of a study's results."""
    title = results["title"] or "BiSSL evidence study"
    timing = results["timings"]
    primary = primary_lines(results)
    sections = [
        section_html("status", "Status", note_html(status_line(results))),
        *(
            [
                section_html(
                    "primary",
                    "Primary answers",
                    "\n".join(f'<p class="lead">{escape(x)}</p>' for x in primary),
                )
            ]
            if primary
            else []
        ),
        section_html(
            "conclusion",
            "Conclusion",
            "\n".join(f'<p class="lead">{escape(line)}</p>' for line in conclusion(results)),
        ),
        section_html(
            "table", "Arms against the reference", table_html(HEADERS, table_rows(results), NUMERIC)
        ),
        section_html("forest", "Differences and cost", figure_html(forest_figure(results), "forest plot")),
        section_html(
            "cost",
            "Compute",
            note_html(
                f"Total wall time of the finished parts {duration_text(timing['total_seconds'])} "
                f"(pretraining {duration_text(timing['pretrain'])})."
            ),
        ),
        section_html("per-seed", "Per pipeline seed", table_html(*seed_table(results))),
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            f"<header><h1>{escape(title)}</h1></header>",
            "<main>",
            *sections,
            "</main>",
            f"<footer>Written by bissl study from {RESULTS_FILE}.</footer>",
            "</body>",
            "</html>",
            "",
        ]
    )


def seed_table(results: StudyResults) -> tuple[list[str], list[list[str]], list[bool]]:
    """The per-pipeline-seed table: headers, rows (one per arm and seed) and which columns are numeric."""
    headers = [
        "arm",
        "pipeline seed",
        "test top-1 (mean of fine-tuning seeds)",
        "fine-tuning seeds",
        "lr / wd",
    ]
    shared = bool(results["shared_hyperparameters"])
    if shared:
        headers += ["test top-1 at the reference's setting"]
    headers += ["k-NN", "probe", "wall time"]
    rows = []
    for name, arm in results["arms"].items():
        for seed, block in arm["seeds"].items():
            values = ", ".join(f"{v:.2f}" for v in block.get("finetune_values", []) if v is not None)
            setting = (
                f"{as_number(block.get('lr')) or 0:.3g} / {as_number(block.get('weight_decay')) or 0:.3g}"
                if METRIC in block
                else "n/a"
            )
            row = [name, seed, fixed_text(block.get(METRIC)), values, setting]
            if shared:
                row.append(fixed_text(block.get(SHARED_METRIC)))
            row += [
                fixed_text(block.get("knn_top1")),
                fixed_text(block.get("probe_top1")),
                duration_text(block.get("total_seconds")),
            ]
            rows.append(row)
    return headers, rows, [False, *[True] * (len(headers) - 1)]


def write_study_report(run_dir: Path, results: StudyResults | None = None) -> Path:
    """report.html next to results.json, from ``results`` (as ``bissl study`` just wrote them) or read from
    the folder's results.json."""
    if results is None:
        results = load_study_results(run_dir)
    target = Path(run_dir) / REPORT_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_text(render_study_report(results))
    temporary.replace(target)
    return target
