"""The study's report: report.html in the study folder, and docs/evidence.md written from results.json alone
(``bissl study-doc DIR --out docs/evidence.md``), both with a forest plot of every arm's difference from the
reference arm, per-seed dots, and each arm's cost; the conclusion is stated in plain words whatever its sign.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bissl.errors import BisslError
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

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
FIGURE_SUFFIX = "forest.png"
ALPHA = 0.05
METRIC = "test_top1"
KEEP_MARKER = "<!-- text below is kept by bissl study-doc -->"


def load_study_results(run_dir: Path) -> dict[str, Any]:
    """results.json of a study folder (one-line error when it is missing or not a study's)."""
    file = Path(run_dir) / RESULTS_FILE
    if not file.is_file():
        raise BisslError(f"no {RESULTS_FILE} in '{run_dir}'; run 'bissl study --config FILE --out DIR' first")
    try:
        results = json.loads(file.read_text())
    except json.JSONDecodeError:
        raise BisslError(f"'{file}' is not valid JSON; rerun the study command to rewrite it") from None
    if not isinstance(results, dict) or "arms" not in results or "reference" not in results:
        raise BisslError(f"'{file}' was not written by 'bissl study'; pass a study folder")
    return results


def _arms(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return dict(results.get("arms") or {})


def secondary_key(results: Mapping[str, Any]) -> str:
    """The fine-tuning statistic of the secondary comparisons: at the reference's setting in a study with
    shared hyper-parameters, else after each arm's own search."""
    return f"{METRIC}_shared" if results.get("shared_hyperparameters") else METRIC


def _comparison(results: Mapping[str, Any], key: str | None = None) -> dict[str, Mapping[str, Any]]:
    return dict((results.get("comparison") or {}).get(key or secondary_key(results)) or {})


def primary_lines(results: Mapping[str, Any]) -> list[str]:
    """The pre-registered hypotheses in plain words: estimate, 95% CI, one-sided p (raw and Holm over the
    hypotheses), the number of pipeline seeds and the decision at alpha, whatever the sign."""
    primary = results.get("primary") or {}
    tests = primary.get("tests") or {}
    if not tests:
        return []
    alpha = float(primary.get("alpha", ALPHA))
    statistic = (
        "at the reference arm's chosen setting"
        if primary.get("statistic") == f"{METRIC}_shared"
        else "after each arm's own search"
    )
    lines = []
    for name, entry in tests.items():
        adjusted = as_number(entry.get("t_pvalue_greater_holm"))
        decided = adjusted is not None and adjusted < alpha
        lines.append(
            f"{name}: {entry.get('arm')} > {entry.get('against')} (fine-tuned test top-1 {statistic}): "
            f"{signed_text(entry.get('mean_difference'))} points (95% CI {signed_text(entry.get('ci_low'))} … "
            f"{signed_text(entry.get('ci_high'))}), one-sided paired t p = {pvalue_text(entry.get('t_pvalue_greater'))}, "
            f"Holm over the {len(tests)} hypotheses p = {pvalue_text(adjusted)}, n = {entry.get('n')} pipeline "
            f"seeds: {'supported' if decided else 'not supported'} at α = {alpha}."
        )
    return lines


def _kind(arm: Mapping[str, Any]) -> str:
    spec = arm.get("spec") or {}
    if spec.get("init") == "random":
        return "random"
    if spec.get("bilevel"):
        return "bilevel"
    if spec.get("extra_pretext"):
        return "matched"
    return "pretrained"


def _verdict(entry: Mapping[str, Any]) -> str:
    """'better', 'worse' or 'unclear': whether the 95% CI of the difference lies above, below or around 0."""
    low, high = as_number(entry.get("ci_low")), as_number(entry.get("ci_high"))
    if low is not None and low > 0:
        return "better"
    if high is not None and high < 0:
        return "worse"
    return "unclear"


def _difference_text(entry: Mapping[str, Any]) -> str:
    return (
        f"{signed_text(entry.get('mean_difference'))} points (95% CI {signed_text(entry.get('ci_low'))} … "
        f"{signed_text(entry.get('ci_high'))}, Holm-adjusted paired t p = {pvalue_text(entry.get('t_pvalue_holm'))})"
    )


def _cost_ratio(results: Mapping[str, Any], name: str) -> float | None:
    arms = _arms(results)
    own = as_number((arms.get(name) or {}).get("seconds_per_seed"))
    base = as_number((arms.get(str(results["reference"])) or {}).get("seconds_per_seed"))
    return own / base if own is not None and base else None


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}×"


def status_line(results: Mapping[str, Any]) -> str:
    finished, expected = results.get("finished_runs", 0), results.get("expected_runs", 0)
    if results.get("complete"):
        return f"Complete: {finished} of {expected} arm × pipeline-seed runs."
    return (
        f"PARTIAL: {finished} of {expected} arm × pipeline-seed runs have finished; the numbers below cover "
        "those only and change as the study continues."
    )


def headline(results: Mapping[str, Any]) -> str:
    """The study's result in one line: the BiSSL arm with the largest mean gain, its interval, Holm-adjusted
    p-value and cost, how many BiSSL arms beat the reference, and the gain against matched extra pretext steps."""
    reference = str(results["reference"])
    compared = _comparison(results)
    bilevel = [n for n, arm in _arms(results).items() if _kind(arm) == "bilevel" and n in compared]
    if not bilevel:
        return "No BiSSL arm has finished yet."
    best = max(bilevel, key=lambda n: as_number(compared[n].get("mean_difference")) or -1e9)
    winners = [n for n in bilevel if _verdict(compared[n]) == "better"]
    significant = [n for n in winners if (as_number(compared[n].get("t_pvalue_holm")) or 1.0) < ALPHA]
    text = (
        f"Largest BiSSL gain: {best} − {reference} = {_difference_text(compared[best])} at "
        f"{_ratio_text(_cost_ratio(results, best))} the cost; {len(winners)} of {len(bilevel)} BiSSL arms have a "
        f"95% CI above 0, {len(significant)} after Holm's correction"
    )
    versus = results.get("versus_matched") or {}
    entry = (versus.get(METRIC) or {}).get(best)
    if entry is not None:
        text += (
            f"; against the same number of extra pretext steps {best} is "
            f"{signed_text(entry.get('mean_difference'))} points (95% CI {signed_text(entry.get('ci_low'))} … "
            f"{signed_text(entry.get('ci_high'))})"
        )
    return text + "."


def conclusion(results: Mapping[str, Any]) -> list[str]:
    """The study's findings as plain sentences: the testbed check, which BiSSL arms beat the reference and by
    how much at what cost, whether a gain is matched by extra pretext steps, and the BatchNorm control."""
    reference = str(results["reference"])
    arms = _arms(results)
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
    significant = [
        name for name in winners if (as_number(compared[name].get("t_pvalue_holm")) or 1.0) < ALPHA
    ]
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
        lowest = min(as_number(compared[n].get("mean_difference")) or 0.0 for n in bilevel)
        highest = max(as_number(compared[n].get("mean_difference")) or 0.0 for n in bilevel)
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
    versus = results.get("versus_matched") or {}
    matched_name = versus.get("reference")
    for name in winners:
        entry = (versus.get(METRIC) or {}).get(name)
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


def _bn_lines(results: Mapping[str, Any], bilevel: Sequence[str]) -> list[str]:
    """What recalibrating BatchNorm statistics alone does to k-NN, beside what the BiSSL arms do, and whether
    each BiSSL arm's k-NN exceeds the control's (paired over pipeline seeds, from results.json's per-seed
    values)."""
    from bissl.eval.stats import compare_to_reference

    knn = _comparison(results, "knn_top1")
    controls = results.get("controls") or {}
    control = next(iter(controls), None)
    if control is None or control not in knn:
        return []
    shift = as_number(knn[control].get("mean_difference"))
    moved = {name: as_number(knn[name].get("mean_difference")) for name in bilevel if name in knn}
    text = ", ".join(f"{name} {signed_text(value)}" for name, value in moved.items())
    line = (
        f"Alignment: recalibrating the reference backbone's BatchNorm statistics on downstream data (the head "
        f"warm-up, no weight change) moves k-NN top-1 by {signed_text(shift)} points "
        f"(95% CI {signed_text(knn[control].get('ci_low'))} … {signed_text(knn[control].get('ci_high'))}); "
        f"the BiSSL arms move it by {text or 'n/a'}."
    )
    per_seed = {control: _seed_values(controls[control], "knn_top1")}
    for name in moved:
        per_seed[name] = _seed_values(_arms(results)[name], "knn_top1")
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


def _seed_values(block: Mapping[str, Any], key: str) -> dict[int, float]:
    """{pipeline seed: value} of one arm or control."""
    values = {}
    for seed, entry in (block.get("seeds") or {}).items():
        number = as_number((entry or {}).get(key))
        if number is not None:
            values[int(seed)] = number
    return values


def table_rows(results: Mapping[str, Any], key: str | None = None) -> list[list[str]]:
    """One row per arm (and the BatchNorm control): accuracy, difference, p-values, alignment, cost.

    ``key`` is the fine-tuning statistic (default: the secondary one); arms without it are left out. The
    primary arm's row of the primary statistic carries its H1 test (one-sided, Holm over the hypotheses)."""
    key = key or secondary_key(results)
    reference = str(results["reference"])
    compared, knn, probe = (_comparison(results, k) for k in (key, "knn_top1", "probe_top1"))
    primary = results.get("primary") or {}
    if primary.get("statistic") == key and "H1" in (primary.get("tests") or {}):
        h1 = primary["tests"]["H1"]
        compared[str(primary.get("arm"))] = h1 | {"t_pvalue_holm": h1.get("t_pvalue_greater_holm")}
    rows = []
    for name, arm in _arms(results).items():
        summary = (arm.get("summary") or {}).get(key) or {}
        if not summary:
            continue
        entry = compared.get(name, {})
        alignment = arm.get("summary") or {}
        rows.append(
            [
                name,
                _mean_std(summary),
                "reference" if name == reference else signed_text(entry.get("mean_difference")),
                "" if name == reference else _ci_text(entry),
                "" if name == reference else pvalue_text(entry.get("t_pvalue_holm")),
                "" if name == reference else pvalue_text(entry.get("wilcoxon_pvalue_holm")),
                fixed_text((alignment.get("knn_top1") or {}).get("mean")),
                signed_text((knn.get(name) or {}).get("mean_difference")) if name != reference else "",
                fixed_text((alignment.get("probe_top1") or {}).get("mean")),
                signed_text((probe.get(name) or {}).get("mean_difference")) if name != reference else "",
                duration_text(arm.get("seconds_per_seed")),
                _ratio_text(_cost_ratio(results, name)),
            ]
        )
    for name, control in (results.get("controls") or {}).items():
        summary = control.get("summary") or {}
        rows.append(
            [
                f"{name} ({control.get('of')}, alignment only)",
                "",
                "",
                "",
                "",
                "",
                fixed_text((summary.get("knn_top1") or {}).get("mean")),
                signed_text((knn.get(name) or {}).get("mean_difference")),
                fixed_text((summary.get("probe_top1") or {}).get("mean")),
                signed_text((probe.get(name) or {}).get("mean_difference")),
                "",
                "",
            ]
        )
    return rows


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


def _mean_std(summary: Mapping[str, Any]) -> str:
    mean, std, count = as_number(summary.get("mean")), as_number(summary.get("std")), summary.get("n")
    return "n/a" if mean is None else f"{mean:.2f} ± {std or 0.0:.2f} (n={count})"


def _ci_text(entry: Mapping[str, Any]) -> str:
    low, high = as_number(entry.get("ci_low")), as_number(entry.get("ci_high"))
    return "n/a" if low is None or high is None else f"{low:+.2f} … {high:+.2f}"


def format_table(results: Mapping[str, Any]) -> str:
    """The table as aligned plain text (printed at the end of ``bissl study``)."""
    rows = [HEADERS, *table_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([status_line(results), *lines, *conclusion(results)])


def markdown_table(results: Mapping[str, Any], key: str | None = None) -> str:
    rows = table_rows(results, key)
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def forest_figure(results: Mapping[str, Any]) -> Figure:
    """Three panels: test top-1 difference from the reference (mean, 95% CI, per-seed dots), the k-NN
    difference (BatchNorm control included), and each arm's wall time per pipeline seed."""
    reference = str(results["reference"])
    arms = _arms(results)
    names = [name for name in arms if name != reference]
    controls = list(results.get("controls") or {})
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
            mean = as_number(entry.get("mean_difference"))
            low, high = as_number(entry.get("ci_low")), as_number(entry.get("ci_high"))
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
    seconds = [(as_number(arms[name].get("seconds_per_seed")) or 0.0) / 60 for name in arms]
    cost.barh(range(len(arms)), seconds, color="#55a868")
    cost.set_yticks(range(len(arms)), list(arms), fontsize=8)
    cost.set_ylim(len(arms) - 0.5, -0.5)
    cost.set_title("wall time per pipeline seed", fontsize=10)
    cost.set_xlabel("minutes")
    cost.grid(True, axis="x", alpha=0.3)
    return figure


def _seed_differences(results: Mapping[str, Any], key: str, name: str) -> list[float]:
    """Per pipeline seed: the arm's (or control's) value minus the reference's."""
    reference = (_arms(results).get(str(results["reference"])) or {}).get("seeds") or {}
    block = _arms(results).get(name) or (results.get("controls") or {}).get(name) or {}
    differences = []
    for seed, values in (block.get("seeds") or {}).items():
        own, base = as_number(values.get(key)), as_number((reference.get(seed) or {}).get(key))
        if own is not None and base is not None:
            differences.append(own - base)
    return differences


def render_study_report(results: Mapping[str, Any]) -> str:
    """The HTML report of a study's results."""
    title = str(results.get("title", "BiSSL evidence study"))
    timing = results.get("timings") or {}
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
                f"Total wall time of the finished parts {duration_text(timing.get('total_seconds'))} "
                f"(pretraining {duration_text(timing.get('pretrain'))})."
            ),
        ),
        section_html("per-seed", "Per pipeline seed", table_html(*_seed_table(results))),
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


def _seed_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[bool]]:
    headers = [
        "arm",
        "pipeline seed",
        "test top-1 (mean of fine-tuning seeds)",
        "fine-tuning seeds",
        "lr / wd",
    ]
    shared = bool(results.get("shared_hyperparameters"))
    if shared:
        headers += ["test top-1 at the reference's setting"]
    headers += ["k-NN", "probe", "wall time"]
    rows = []
    for name, arm in _arms(results).items():
        for seed, block in (arm.get("seeds") or {}).items():
            values = ", ".join(f"{v:.2f}" for v in block.get("finetune_values") or [])
            setting = (
                f"{as_number(block.get('lr')) or 0:.3g} / {as_number(block.get('weight_decay')) or 0:.3g}"
                if METRIC in block
                else "n/a"
            )
            row = [name, seed, fixed_text(block.get(METRIC)), values, setting]
            if shared:
                row.append(fixed_text(block.get(f"{METRIC}_shared")))
            row += [
                fixed_text(block.get("knn_top1")),
                fixed_text(block.get("probe_top1")),
                duration_text(block.get("total_seconds")),
            ]
            rows.append(row)
    return headers, rows, [False, *[True] * (len(headers) - 1)]


def write_study_report(run_dir: Path) -> Path:
    """report.html next to results.json."""
    results = load_study_results(run_dir)
    target = Path(run_dir) / REPORT_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_text(render_study_report(results))
    temporary.replace(target)
    return target


def evidence_markdown(
    results: Mapping[str, Any], figure: str, run_dir: str, out: str = "docs/evidence.md"
) -> str:
    """docs/evidence.md from results.json: status, conclusion, table, figure, per-seed numbers, cost."""
    timing = results.get("timings") or {}
    config = results.get("config") or {}
    data = config.get("data") or {}
    model = config.get("model") or {}
    lines = [
        "# Evidence: does BiSSL's bilevel stage beat the conventional pipeline?",
        "",
        f"Written by `bissl study-doc {run_dir} --out {out}` from the study's results.json "
        f"({results.get('created', 'n/a')}). {status_line(results)}",
        "",
        f"Testbed: pretext {data.get('pretext')} images (labels unused) → downstream {data.get('downstream')} "
        f"with {data.get('downstream_limit')} labelled training images (a {data.get('val_fraction')} share of "
        f"them held out for the search), {data.get('image_size')} px, {model.get('backbone')} width "
        f"{model.get('width')}. Pipeline seeds {results.get('pipeline_seeds')}, "
        f"{results.get('finetune_seeds')} fine-tuning seeds each; every comparison is paired over pipeline "
        f"seeds (each contributes the mean of its fine-tuning seeds). Reference arm: {results['reference']}.",
        "",
        *_primary_section(results),
        "## Conclusion" if not results.get("primary") else "## Secondary questions",
        "",
        f"**{headline(results)}**",
        "",
        *[f"- {line}" for line in conclusion(results)],
        "",
        *_table_sections(results),
        f"![differences from {results['reference']} with 95% CIs, per-seed crosses, and cost]({figure})",
        "",
        f"Compute of the finished parts: {duration_text(timing.get('total_seconds'))} "
        f"(pretraining {duration_text(timing.get('pretrain'))}), measured on a shared 2-core CPU under load.",
        "",
        "## Per pipeline seed",
        "",
    ]
    headers, rows, _ = _seed_table(results)
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _primary_section(results: Mapping[str, Any]) -> list[str]:
    lines = primary_lines(results)
    if not lines:
        return []
    return ["## Primary answers", "", *[f"- **{line}**" for line in lines], ""]


def _table_sections(results: Mapping[str, Any]) -> list[str]:
    """The table of the secondary statistic and, in a study with shared hyper-parameters, the paper's
    protocol (each arm's own search) beside it, each Holm-corrected over its own rows."""
    if not results.get("shared_hyperparameters"):
        return ["## Table", "", markdown_table(results, METRIC), ""]
    return [
        "## Table: every arm fine-tuned at the reference arm's chosen setting",
        "",
        "Holm's correction runs over the rows of this table other than the primary arm (whose row shows H1).",
        "",
        markdown_table(results, f"{METRIC}_shared"),
        "",
        "## Table: the paper's protocol (each arm searches its own setting)",
        "",
        "Arms that searched their own setting; Holm's correction runs over the rows of this table.",
        "",
        markdown_table(results, METRIC),
        "",
    ]


def write_evidence(run_dir: Path, out: Path) -> Path:
    """Write ``out`` (markdown) and its figure ``images/<out stem>-forest.png`` beside it from results.json.

    Hand-written text below the line KEEP_MARKER in an existing ``out`` (how the testbed was chosen) is kept.
    """
    results = load_study_results(run_dir)
    kept = ""
    if out.is_file() and KEEP_MARKER in out.read_text():
        kept = KEEP_MARKER + out.read_text().split(KEEP_MARKER, 1)[1]
    figure_name = f"{out.stem}-{FIGURE_SUFFIX}"
    figure_path = out.parent / "images" / figure_name
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    forest_figure(results).savefig(figure_path, dpi=100)
    text = evidence_markdown(results, f"images/{figure_name}", str(run_dir), str(out))
    out.write_text(text + (f"\n{kept.rstrip()}\n" if kept else ""))
    return out
