"""docs/evidence.md from a study's results.json alone (``bissl study-doc DIR --out docs/evidence.md``): the
primary answers, the conclusion, the tables, the forest plot beside it as a PNG, the per-seed numbers and the
cost, in the words and numbers of the study's report (``bissl.report.study``). Hand-written text below a
marker line is kept when the page is rewritten.
"""

from __future__ import annotations

from pathlib import Path

from bissl.report.markup import duration_text
from bissl.report.schema import StudyResults, load_study_results
from bissl.report.study import (
    HEADERS,
    METRIC,
    SHARED_METRIC,
    conclusion,
    forest_figure,
    headline,
    primary_lines,
    seed_table,
    status_line,
    table_rows,
)

FIGURE_SUFFIX = "forest.png"
KEEP_MARKER = "<!-- text below is kept by bissl study-doc -->"


def markdown_table(results: StudyResults, key: str | None = None) -> str:
    rows = table_rows(results, key)
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def evidence_markdown(results: StudyResults, figure: str, run_dir: str, out: str = "docs/evidence.md") -> str:
    """docs/evidence.md from results.json: status, conclusion, table, figure, per-seed numbers, cost."""
    timing = results["timings"]
    data, model = _config_section(results, "data"), _config_section(results, "model")
    created = results["created"] or "n/a"
    lines = [
        "# Evidence: does BiSSL's bilevel stage beat the conventional pipeline?",
        "",
        f"Written by `bissl study-doc {run_dir} --out {out}` from the study's results.json "
        f"({created}). {status_line(results)}",
        "",
        f"Testbed: pretext {data.get('pretext')} images (labels unused) → downstream {data.get('downstream')} "
        f"with {data.get('downstream_limit')} labelled training images (a {data.get('val_fraction')} share of "
        f"them held out for the search), {data.get('image_size')} px, {model.get('backbone')} width "
        f"{model.get('width')}. Pipeline seeds {results['pipeline_seeds']}, "
        f"{results['finetune_seeds']} fine-tuning seeds each; every comparison is paired over pipeline "
        f"seeds (each contributes the mean of its fine-tuning seeds). Reference arm: {results['reference']}.",
        "",
        *_primary_section(results),
        "## Conclusion" if results["primary"]["arm"] is None else "## Secondary questions",
        "",
        f"**{headline(results)}**",
        "",
        *[f"- {line}" for line in conclusion(results)],
        "",
        *_table_sections(results),
        f"![differences from {results['reference']} with 95% CIs, per-seed crosses, and cost]({figure})",
        "",
        f"Compute of the finished parts: {duration_text(timing['total_seconds'])} "
        f"(pretraining {duration_text(timing['pretrain'])}), measured on a shared 2-core CPU under load.",
        "",
        "## Per pipeline seed",
        "",
    ]
    headers, rows, _ = seed_table(results)
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _config_section(results: StudyResults, name: str) -> dict[str, object]:
    """One section of the study's resolved config ({} when the file has none)."""
    section = results["config"].get(name)
    return section if isinstance(section, dict) else {}


def _primary_section(results: StudyResults) -> list[str]:
    lines = primary_lines(results)
    if not lines:
        return []
    return ["## Primary answers", "", *[f"- **{line}**" for line in lines], ""]


def _table_sections(results: StudyResults) -> list[str]:
    """The table of the secondary statistic and, in a study with shared hyper-parameters, the paper's
    protocol (each arm's own search) beside it, each Holm-corrected over its own rows."""
    if not results["shared_hyperparameters"]:
        return ["## Table", "", markdown_table(results, METRIC), ""]
    return [
        "## Table: every arm fine-tuned at the reference arm's chosen setting",
        "",
        "Holm's correction runs over the rows of this table other than the primary arm (whose row shows H1).",
        "",
        markdown_table(results, SHARED_METRIC),
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
