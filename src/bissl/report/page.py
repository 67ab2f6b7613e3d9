"""Page assembly: the section order, the header line, the whole HTML document and writing report.html."""

from __future__ import annotations

from pathlib import Path

from bissl.errors import BisslError
from bissl.report.curvature import curvature_section
from bissl.report.curves import curves_section
from bissl.report.markup import STYLE, config_yaml, escape, section_html
from bissl.report.outcome import per_seed_section, results_section, statistics_section, summary_sentence
from bissl.report.probes import extra_figures_section, probes_section, tsne_section
from bissl.report.results import metric_label, primary_metric_key
from bissl.report.run_details import search_section, timings_section
from bissl.report.schema import RESULTS_FILE, CompareResults, load_compare_results

REPORT_FILE = "report.html"
SECTIONS = (
    ("summary", "Summary"),
    ("results", "Results"),
    ("per-seed", "Per-seed results"),
    ("statistics", "Paired statistics"),
    ("probes", "Probes before fine-tuning"),
    ("tsne", "t-SNE of frozen features"),
    ("curves", "Learning curves"),
    ("curvature", "Curvature"),
    ("search", "Hyper-parameter search"),
    ("timings", "Wall time per stage"),
    ("config", "Configuration"),
)
FAIRNESS_NOTES = {
    "same-checkpoint": "both arms start from the same pretext checkpoint",
    "extra-pretext": "the baseline got extra pretext training matching BiSSL's lower-level work",
}


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from ``run_dir/results.json`` and return its path.

    Raises BisslError with a one-line message when the folder or results.json is missing or malformed.
    """
    run_dir = Path(run_dir)
    results = load_compare_results(run_dir)
    output = run_dir / REPORT_FILE
    if output.is_dir():
        raise BisslError(f"{output} is a folder; remove or rename it, then rerun 'bissl report {run_dir}'")
    document = render_report(results, run_dir)
    temporary = output.with_name(output.name + ".tmp")
    try:
        temporary.write_text(document, encoding="utf-8")
        temporary.replace(output)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise BisslError(
            f"cannot write {output} ({error.strerror}); make {run_dir} writable (or copy it elsewhere), "
            f"then rerun 'bissl report {run_dir}'"
        ) from None
    return output


def render_report(results: CompareResults, run_dir: Path) -> str:
    """The whole HTML document for checked results; figure files are looked up relative to ``run_dir``."""
    title = results["title"]
    builders = {
        "summary": lambda: f'<p class="lead">{escape(summary_sentence(results))}</p>',
        "results": lambda: results_section(results),
        "per-seed": lambda: per_seed_section(results),
        "statistics": lambda: statistics_section(results),
        "probes": lambda: probes_section(results),
        "tsne": lambda: tsne_section(results, run_dir),
        "curves": lambda: curves_section(results),
        "curvature": lambda: curvature_section(results),
        "search": lambda: search_section(results),
        "timings": lambda: timings_section(results),
        "config": lambda: f"<pre>{escape(config_yaml(results['config']))}</pre>",
    }
    sections = [section_html(section_id, heading, builders[section_id]()) for section_id, heading in SECTIONS]
    extra_figures = extra_figures_section(results, run_dir)
    if extra_figures:
        sections.insert(len(sections) - 1, extra_figures)
    navigation = " ".join(
        f'<a href="#{section_id}">{escape(heading)}</a>' for section_id, heading in SECTIONS
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            "<header>",
            f"<h1>{escape(title)}</h1>",
            f'<p class="meta">{escape(_meta_line(results))}</p>',
            f"<nav>{navigation}</nav>",
            "</header>",
            "<main>",
            *sections,
            "</main>",
            f"<footer>Written by bissl report from {escape(RESULTS_FILE)}.</footer>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _meta_line(results: CompareResults) -> str:
    datasets = results["datasets"]
    fairness = results["fairness"]
    parts = [
        f"created {results['created']}",
        f"pretext {datasets['pretext'] or 'n/a'} → downstream {datasets['downstream'] or 'n/a'}",
        f"primary metric {metric_label(primary_metric_key(results))}",
        f"fairness {fairness} ({FAIRNESS_NOTES.get(fairness, 'unknown mode')})",
    ]
    return " · ".join(parts)
