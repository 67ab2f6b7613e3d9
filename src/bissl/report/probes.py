"""The representation sections: linear and k-NN probes of frozen features, the t-SNE figure, extra figures."""

from __future__ import annotations

from pathlib import Path

from bissl.report.figures import embedded_file
from bissl.report.markup import escape, fixed_text, note_html, section_html, table_html
from bissl.report.results import arm_label, arm_names
from bissl.report.schema import CompareResults


def probes_section(results: CompareResults) -> str:
    probes = results["probes"]
    names = arm_names(probes)
    if not names:
        return note_html("No probe was recorded.")
    rows = [
        [
            arm_label(name),
            fixed_text(probes[name].get("knn_top1")),
            fixed_text(probes[name].get("probe_top1")),
        ]
        for name in names
    ]
    return (
        table_html(["Arm", "k-NN top-1", "Linear-probe top-1"], rows, [False, True, True])
        + "\n"
        + note_html("Frozen backbone features on the downstream task, before fine-tuning (percent).")
    )


def tsne_section(results: CompareResults, run_dir: Path) -> str:
    relative = results["figures"].get("tsne")
    if not relative:
        return note_html("No t-SNE figure was produced for this run.")
    return embedded_file(run_dir, relative, "t-SNE of frozen downstream features, baseline beside BiSSL")


def extra_figures_section(results: CompareResults, run_dir: Path) -> str:
    """Figure files named in results.json besides the t-SNE, so that none is silently dropped."""
    extra = {key: value for key, value in results["figures"].items() if key != "tsne" and value}
    if not extra:
        return ""
    body = "\n".join(
        f"<h3>{escape(key)}</h3>\n{embedded_file(run_dir, value, key)}" for key, value in extra.items()
    )
    return section_html("figures", "Other figures", body)
