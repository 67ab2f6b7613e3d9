"""The HTML report of `bissl compare`: one self-contained file with tables, figures and the paired statistics.

It reads ``run_dir/results.json`` and draws its figures with matplotlib (Agg), embedding every image as a
base64 PNG, so the file can be archived or mailed alone and opened offline without JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bissl.errors import BisslError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
ARM_ORDER = ("baseline", "bissl")
ARM_LABELS = {"baseline": "Baseline", "bissl": "BiSSL"}
ARM_COLOURS = {"baseline": "#4c72b0", "bissl": "#dd8452"}
OTHER_COLOURS = ("#55a868", "#c44e52", "#8172b3", "#937860")
REGULARISER_COLOUR = "#937860"
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
REQUIRED_KEYS = (
    "title",
    "created",
    "primary_metric",
    "datasets",
    "config",
    "arms",
    "comparison",
    "probes",
    "curves",
    "timings",
    "fairness",
)
# The signed-rank test cannot reach a two-sided p below 0.05 with fewer paired seeds than this.
SMALL_SAMPLE_SEEDS = 6
TOP_TRIALS = 10
FIGURE_DPI = 100
FAIRNESS_NOTES = {
    "same-checkpoint": "both arms start from the same pretext checkpoint",
    "extra-pretext": "the baseline got extra pretext training matching BiSSL's lower-level work",
}

STYLE = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222;
       background: #fff; margin: 0; line-height: 1.45; }
header, main { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; border-bottom: 1px solid #ddd; }
h1 { font-size: 1.6em; margin: 0 0 6px; }
h2 { font-size: 1.25em; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #eee; }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
.meta { color: #555; margin: 0 0 10px; }
nav { margin: 8px 0 14px; font-size: 0.92em; }
nav a { margin-right: 14px; color: #2a5db0; text-decoration: none; }
.lead { font-size: 1.08em; background: #f5f7fb; border-left: 4px solid #4c72b0; padding: 10px 14px; }
.note { color: #666; font-size: 0.92em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 0.93em; }
th, td { border: 1px solid #d8d8d8; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafafa; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
td.number { white-space: nowrap; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 10px 12px; overflow-x: auto;
      font-size: 0.86em; }
footer { max-width: 1180px; margin: 30px auto 20px; padding: 0 24px; color: #888; font-size: 0.85em; }
"""


class _Malformed(Exception):
    """A structural problem in results.json; its message names the offending key."""


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from ``run_dir/results.json`` and return its path.

    Raises BisslError with a one-line message when the folder or results.json is missing or malformed.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    document = render_report(results, run_dir)
    output = run_dir / REPORT_FILE
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(document, encoding="utf-8")
    temporary.replace(output)
    return output


def load_results(run_dir: Path) -> dict[str, Any]:
    """Read and check ``run_dir/results.json``; every problem becomes a one-line BisslError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BisslError(f"{run_dir} is not a folder: pass the folder written by 'bissl compare'")
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise BisslError(f"{path} not found: pass a folder written by 'bissl compare', or run it first")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BisslError(f"{path} is not UTF-8 text: rerun 'bissl compare' to rewrite it") from None
    except json.JSONDecodeError as error:
        raise BisslError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}): "
            "rerun 'bissl compare' to rewrite it"
        ) from None
    try:
        _validate(results)
    except _Malformed as problem:
        raise BisslError(f"{path} is malformed: {problem}; rerun 'bissl compare' to rewrite it") from None
    return dict(results)


def render_report(results: Mapping[str, Any], run_dir: Path) -> str:
    """The whole HTML document for checked results; figure files are looked up relative to ``run_dir``."""
    title = str(results["title"])
    builders = {
        "summary": lambda: f'<p class="lead">{_escape(summary_sentence(results))}</p>',
        "results": lambda: _results_section(results),
        "per-seed": lambda: _per_seed_section(results),
        "statistics": lambda: _statistics_section(results),
        "probes": lambda: _probes_section(results),
        "tsne": lambda: _tsne_section(results, run_dir),
        "curves": lambda: _curves_section(results),
        "curvature": lambda: _curvature_section(results),
        "search": lambda: _search_section(results),
        "timings": lambda: _timings_section(results),
        "config": lambda: f"<pre>{_escape(_config_yaml(results['config']))}</pre>",
    }
    sections = [_section(section_id, heading, builders[section_id]()) for section_id, heading in SECTIONS]
    extra_figures = _extra_figures_section(results, run_dir)
    if extra_figures:
        sections.insert(len(sections) - 1, extra_figures)
    navigation = " ".join(
        f'<a href="#{section_id}">{_escape(heading)}</a>' for section_id, heading in SECTIONS
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            "<header>",
            f"<h1>{_escape(title)}</h1>",
            f'<p class="meta">{_escape(_meta_line(results))}</p>',
            f"<nav>{navigation}</nav>",
            "</header>",
            "<main>",
            *sections,
            "</main>",
            f"<footer>Written by bissl report from {_escape(RESULTS_FILE)}.</footer>",
            "</body>",
            "</html>",
            "",
        ]
    )


def summary_sentence(results: Mapping[str, Any]) -> str:
    """One plain-text sentence: which arm won on the primary metric, by how much, how sure we can be."""
    primary = primary_metric_key(results)
    label = metric_label(primary)
    arms = _ordered_arms(results)
    if not ("baseline" in arms and "bissl" in arms):
        only = next(iter(arms))
        summary = _metric_summary(arms[only], primary)
        return (
            f"Only the {arm_label(only)} arm ran, so there is no comparison: its {label} is "
            f"{_mean_std(summary)} over {_count(summary.get('n'))} seeds."
        )
    entry = _as_mapping(_as_mapping(results.get("comparison")).get(primary))
    difference = _number(entry.get("mean_difference"))
    if difference is None:
        return (
            f"No paired comparison on {label} was recorded: BiSSL reached "
            f"{_mean_std(_metric_summary(arms['bissl'], primary))} and the baseline "
            f"{_mean_std(_metric_summary(arms['baseline'], primary))} (mean ± std over seeds)."
        )
    seeds = _number(entry.get("n"))
    low, high = _interval(entry.get("ci95"))
    if difference > 0:
        lead = f"BiSSL beat the baseline on {label} by {abs(difference):.2f} points"
    elif difference < 0:
        lead = f"The baseline beat BiSSL on {label} by {abs(difference):.2f} points"
    else:
        lead = f"BiSSL and the baseline tied on {label}"
    details = (
        f" (mean paired difference BiSSL − baseline {difference:+.2f}; 95% CI {_interval_text(low, high)}; "
        f"paired t-test p = {_pvalue(entry.get('t_pvalue'))}, "
        f"Wilcoxon p = {_pvalue(entry.get('wilcoxon_pvalue'))}; "
        f"n = {_count(seeds)} paired seeds)"
    )
    small = seeds is not None and seeds < SMALL_SAMPLE_SEEDS
    if low is None or high is None:
        remark = ", but with no interval (it needs two or more paired seeds) this is no evidence either way"
    elif low <= 0 <= high and small:
        remark = (
            f", but with only {_count(seeds)} seeds and an interval that includes 0 the difference is "
            "indistinguishable from seed-to-seed noise"
        )
    elif low <= 0 <= high:
        remark = ", but the interval includes 0, so the difference is not significant at the 5% level"
    elif small:
        remark = (
            f"; the interval excludes 0, but with only {_count(seeds)} seeds (the signed-rank test cannot go "
            f"below p = 0.05 with fewer than {SMALL_SAMPLE_SEEDS}) treat it as preliminary"
        )
    else:
        remark = "; the interval excludes 0"
    return lead + details + remark + "."


def primary_metric_key(results: Mapping[str, Any]) -> str:
    """The per-seed key of the primary metric, e.g. "test_top1"."""
    return f"test_{results['primary_metric']}"


def metric_label(key: str) -> str:
    """A readable name for a metric key: "test_top1" → "test top-1", "test_map" → "test mAP"."""
    names = {"top1": "top-1", "top5": "top-5", "map": "mAP", "map_noninterpolated": "mAP (non-interpolated)"}
    prefix, _, name = key.partition("_") if key.startswith("test_") else ("", "", key)
    readable = names.get(name, name.replace("_", " "))
    return f"{prefix} {readable}" if prefix else readable


def arm_label(name: str) -> str:
    """A readable arm name: "bissl" → "BiSSL"; unknown names are shown as they are."""
    return ARM_LABELS.get(name, name)


# ----------------------------------------------------------------------------------------------------------
# Checking results.json


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _expect_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} must be an object, got {_json_type(value)}")
    return value


def _expect_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Malformed(f"{where} must be a list, got {_json_type(value)}")
    return value


def _expect_string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise _Malformed(f"{where} must be a string, got {_json_type(value)}")


def _expect_number(value: Any, where: str) -> None:
    """A number or null (not measured)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _Malformed(f"{where} must be a number or null, got {_json_type(value)}")


def _expect_records(value: Any, where: str, text_keys: Sequence[str] = ()) -> None:
    """A list of objects whose values are numbers, booleans or text (``text_keys`` must be text); other
    entries (paths, notes) are carried along and ignored by the figures."""
    for index, record in enumerate(_expect_list(value, where)):
        for key, field in _expect_object(record, f"{where}[{index}]").items():
            if field is None or (isinstance(field, bool) and key not in text_keys):
                continue
            if key in text_keys or isinstance(field, str):
                _expect_string(field, f"{where}[{index}].{key}")
            else:
                _expect_number(field, f"{where}[{index}].{key}")


def _validate(results: Any) -> None:
    """Check the structure of results.json: inner keys may be missing (shown as n/a), but types must fit."""
    top = _expect_object(results, "the top level")
    missing = [key for key in REQUIRED_KEYS if key not in top]
    if missing:
        names = ", ".join(repr(key) for key in missing)
        raise _Malformed(
            f"{'keys' if len(missing) > 1 else 'key'} {names} {'are' if len(missing) > 1 else 'is'} missing"
        )
    for key in ("title", "created", "primary_metric", "fairness"):
        _expect_string(top[key], key)
    for key, value in _expect_object(top["datasets"], "datasets").items():
        _expect_string(value, f"datasets.{key}")
    _expect_object(top["config"], "config")
    arms = _expect_object(top["arms"], "arms")
    if not arms:
        raise _Malformed("arms is empty (it needs 'baseline', 'bissl' or both)")
    for name, arm in arms.items():
        _validate_arm(arm, f"arms.{name}")
    for metric, entry in _expect_object(top["comparison"], "comparison").items():
        where = f"comparison.{metric}"
        entry = _expect_object(entry, where)
        for key in ("n", "mean_difference", "t_pvalue", "wilcoxon_pvalue"):
            _expect_number(entry.get(key), f"{where}.{key}")
        interval = entry.get("ci95")
        if interval is not None:
            if len(_expect_list(interval, f"{where}.ci95")) != 2:
                raise _Malformed(f"{where}.ci95 must hold two numbers [low, high]")
            for bound in interval:
                _expect_number(bound, f"{where}.ci95")
    for name, probe in _expect_object(top["probes"], "probes").items():
        for key, value in _expect_object(probe, f"probes.{name}").items():
            _expect_number(value, f"probes.{name}.{key}")
    if top.get("figures") is not None:
        for key, value in _expect_object(top["figures"], "figures").items():
            _expect_string(value, f"figures.{key}")
    curves = _expect_object(top["curves"], "curves")
    for key in ("pretrain", "bilevel"):
        if curves.get(key) is not None:
            _expect_records(curves[key], f"curves.{key}")
    if curves.get("finetune") is not None:
        for name, points in _expect_object(curves["finetune"], "curves.finetune").items():
            _expect_records(points, f"curves.finetune.{name}")
    for stage, seconds in _expect_object(top["timings"], "timings").items():
        _expect_number(seconds, f"timings.{stage}")


def _validate_arm(arm: Any, where: str) -> None:
    arm = _expect_object(arm, where)
    if arm.get("backbone") is not None:
        _expect_string(arm["backbone"], f"{where}.backbone")
    if arm.get("search") is not None:
        search = _expect_object(arm["search"], f"{where}.search")
        if search.get("best") is not None:
            for key, value in _expect_object(search["best"], f"{where}.search.best").items():
                _expect_number(value, f"{where}.search.best.{key}")
        if search.get("trials") is not None:
            _expect_records(search["trials"], f"{where}.search.trials", text_keys=("state",))
    if arm.get("seeds") is not None:
        _expect_records(arm["seeds"], f"{where}.seeds")
    if arm.get("summary") is not None:
        for metric, entry in _expect_object(arm["summary"], f"{where}.summary").items():
            entry = _expect_object(entry, f"{where}.summary.{metric}")
            for key in ("mean", "std", "n"):
                _expect_number(entry.get(key), f"{where}.summary.{metric}.{key}")
            if entry.get("values") is not None:
                for value in _expect_list(entry["values"], f"{where}.summary.{metric}.values"):
                    _expect_number(value, f"{where}.summary.{metric}.values")


# ----------------------------------------------------------------------------------------------------------
# Formatting


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _number(value: Any) -> float | None:
    """A finite float, or None for null, NaN, infinities and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fixed(value: Any, digits: int = 2) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def _signed(value: Any, digits: int = 2) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:+.{digits}f}"


def _general(value: Any) -> str:
    """Three significant digits, for learning rates and weight decays."""
    number = _number(value)
    return "n/a" if number is None else f"{number:.3g}"


def _count(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else str(round(number))


def _pvalue(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "n/a"
    return "< 0.001" if number < 0.001 else f"{number:.3f}"


def _duration(value: Any) -> str:
    """Seconds as h:mm:ss."""
    number = _number(value)
    if number is None:
        return "n/a"
    minutes, seconds = divmod(round(number), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _interval(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, list) and len(value) == 2:
        return _number(value[0]), _number(value[1])
    return None, None


def _interval_text(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"[{low:+.2f}, {high:+.2f}]"


def _mean_std(summary: Mapping[str, Any]) -> str:
    mean, std = _number(summary.get("mean")), _number(summary.get("std"))
    if mean is None:
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} ± n/a"


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ordered_arms(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The arms, baseline then BiSSL, then any other name in file order."""
    arms = _as_mapping(results.get("arms"))
    return {name: _as_mapping(arms[name]) for name in _arm_names(arms)}


def _arm_names(by_arm: Mapping[str, Any]) -> list[str]:
    """The keys of a per-arm mapping, baseline then BiSSL, then any other name in file order."""
    return [name for name in ARM_ORDER if name in by_arm] + [name for name in by_arm if name not in ARM_ORDER]


def _arm_colour(name: str, position: int) -> str:
    return ARM_COLOURS.get(name, OTHER_COLOURS[position % len(OTHER_COLOURS)])


def _metric_summary(arm: Mapping[str, Any], metric: str) -> Mapping[str, Any]:
    return _as_mapping(_as_mapping(arm.get("summary")).get(metric))


def _test_metrics(results: Mapping[str, Any]) -> list[str]:
    """Every test metric any arm reports (summary or seeds), the primary one first."""
    found: list[str] = []
    for arm in _ordered_arms(results).values():
        keys = list(_as_mapping(arm.get("summary")))
        for seed in _as_list(arm.get("seeds")):
            keys.extend(_as_mapping(seed))
        found.extend(key for key in keys if key.startswith("test_") and key not in found)
    primary = primary_metric_key(results)
    return [primary, *sorted(key for key in found if key != primary)]


def _meta_line(results: Mapping[str, Any]) -> str:
    datasets = _as_mapping(results.get("datasets"))
    fairness = str(results.get("fairness"))
    parts = [
        f"created {results.get('created')}",
        f"pretext {datasets.get('pretext', 'n/a')} → downstream {datasets.get('downstream', 'n/a')}",
        f"primary metric {metric_label(primary_metric_key(results))}",
        f"fairness {fairness} ({FAIRNESS_NOTES.get(fairness, 'unknown mode')})",
    ]
    return " · ".join(parts)


def _section(section_id: str, heading: str, body: str) -> str:
    return f'<section id="{_escape(section_id)}">\n<h2>{_escape(heading)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_escape(text)}</p>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """An HTML table from plain-text cells (escaped here); ``numeric`` columns are right-aligned."""

    def cell(tag: str, text: str, column: int) -> str:
        css = ' class="number"' if numeric[column] else ""
        return f"<{tag}{css}>{_escape(text)}</{tag}>"

    head = "".join(cell("th", text, column) for column, text in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(cell("td", text, column) for column, text in enumerate(row)) + "</tr>"
        for row in rows
    )
    table = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f'<div class="scroll">{table}</div>'


def _config_yaml(config: Any) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)


# ----------------------------------------------------------------------------------------------------------
# Figures


def _new_figure(
    width: float,
    height: float,
    rows: int = 1,
    columns: int = 1,
    right_margin: float = 0.3,
    column_gap: float = 0.45,
) -> tuple[Figure, list[Axes]]:
    """A matplotlib figure on the Agg canvas (no pyplot, no global state) with a grid of axes.

    Margins are fixed in inches rather than computed by a layout engine, which would triple the drawing time.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    grid = {
        "left": 0.8 / width,
        "right": 1 - right_margin / width,
        "bottom": 0.6 / height,
        "top": 1 - 0.4 / height,
        "wspace": column_gap,
        "hspace": 0.55,
    }
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=grid)
    return figure, list(axes.reshape(-1))


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image_html(png: bytes, alt: str, caption: str = "") -> str:
    caption_html = f"<figcaption>{_escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_png_data_uri(png)}" alt="{_escape(alt)}">{caption_html}</figure>'


def _figure_html(figure: Figure, alt: str, caption: str = "") -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return _image_html(buffer.getvalue(), alt, caption)


def _png_file(path: Path) -> bytes:
    """The bytes of a PNG image file; other image formats matplotlib can read are re-encoded as PNG."""
    data = path.read_bytes()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    from matplotlib import image

    buffer = io.BytesIO()
    image.imsave(buffer, image.imread(path), format="png")
    return buffer.getvalue()


def _embedded_file(run_dir: Path, relative: str, alt: str) -> str:
    """An <img> of a figure file named in results.json, or a note saying why it is not shown."""
    path = run_dir / relative
    if not path.is_file():
        return _note(f"The figure {relative} named in {RESULTS_FILE} was not found in {run_dir}.")
    try:
        png = _png_file(path)
    except (OSError, ValueError, SyntaxError) as error:
        return _note(f"The figure {relative} could not be read as an image ({error}).")
    return _image_html(png, alt, caption=relative)


def _series(points: Sequence[Any], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """x and y of a curve; points without the value become NaN so that the line shows a gap."""
    xs: list[float] = []
    ys: list[float] = []
    for position, point in enumerate(points):
        record = _as_mapping(point)
        x = _number(record.get(x_key))
        y = _number(record.get(y_key))
        xs.append(float(position) if x is None else x)
        ys.append(math.nan if y is None else y)
    return xs, ys


def _has_values(values: Sequence[float]) -> bool:
    return any(math.isfinite(value) for value in values)


def _style_axis(axis: Axes, title: str, x_label: str, y_label: str = "") -> None:
    """Title, labels and a light grid; x axes count steps, epochs or alternations, so their ticks are whole."""
    from matplotlib import ticker

    axis.set_title(title, fontsize=10)
    if x_label:
        axis.set_xlabel(x_label)
        axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if y_label:
        axis.set_ylabel(y_label)
    axis.grid(True, alpha=0.3)


# ----------------------------------------------------------------------------------------------------------
# Sections


def _results_section(results: Mapping[str, Any]) -> str:
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
    for name, arm in _ordered_arms(results).items():
        search = _as_mapping(arm.get("search"))
        best = _as_mapping(search.get("best"))
        seeds = _count(_metric_summary(arm, metrics[0]).get("n"))
        if seeds == "n/a" and isinstance(arm.get("seeds"), list):
            seeds = str(len(arm["seeds"]))
        rows.append(
            [
                arm_label(name),
                str(arm.get("backbone", "n/a")),
                *[_mean_std(_metric_summary(arm, metric)) for metric in metrics],
                seeds,
                _general(best.get("lr")),
                _general(best.get("weight_decay")),
                _fixed(best.get("value")),
                str(len(_as_list(search.get("trials")))),
            ]
        )
    numeric = [False, False, *[True] * (len(headers) - 2)]
    return (
        _table(headers, rows, numeric)
        + "\n"
        + _note("Test metrics in percent, mean ± sample std over seeds; lr and weight decay from the search.")
    )


def _seed_values(arm: Mapping[str, Any], metric: str) -> dict[int, float]:
    """{seed: value} of one metric; seeds without a recorded number are left out."""
    values: dict[int, float] = {}
    for position, entry in enumerate(_as_list(arm.get("seeds"))):
        record = _as_mapping(entry)
        seed = _number(record.get("seed"))
        value = _number(record.get(metric))
        if value is not None:
            values[position if seed is None else round(seed)] = value
    return values


def _per_seed_section(results: Mapping[str, Any]) -> str:
    arms = _ordered_arms(results)
    panels = [
        metric for metric in _test_metrics(results) if any(_seed_values(arm, metric) for arm in arms.values())
    ]
    if not panels:
        return _note("No per-seed test metric was recorded.")
    figure, axes = _new_figure(0.8 + 3.0 * len(panels), 3.6, columns=len(panels))
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
            colour = _arm_colour(name, position)
            axis.scatter([position] * len(points), points, s=36, color=colour, zorder=3, edgecolors="white")
            mean = sum(points) / len(points)
            axis.hlines(mean, position - 0.18, position + 0.18, colors=colour, lw=2.5, zorder=2)
        axis.set_xticks(range(len(names)), [arm_label(name) for name in names])
        axis.set_xlim(-0.5, len(names) - 0.5)
        _style_axis(axis, metric_label(metric), "")
    return _figure_html(
        figure,
        "per-seed test metrics of each arm",
        "One dot per seed; grey lines join the same seed across arms; bars mark the means.",
    )


def _statistics_section(results: Mapping[str, Any]) -> str:
    comparison = _as_mapping(results.get("comparison"))
    if not comparison:
        return _note("No paired comparison was recorded (it needs both arms).")
    primary = primary_metric_key(results)
    metrics = ([primary] if primary in comparison else []) + [key for key in comparison if key != primary]
    rows = []
    for metric in metrics:
        entry = _as_mapping(comparison[metric])
        rows.append(
            [
                metric_label(metric),
                _count(entry.get("n")),
                _signed(entry.get("mean_difference")),
                _interval_text(*_interval(entry.get("ci95"))),
                _pvalue(entry.get("t_pvalue")),
                _pvalue(entry.get("wilcoxon_pvalue")),
            ]
        )
    headers = ["Metric", "Paired seeds", "Mean difference", "95% CI", "Paired t-test p", "Wilcoxon p"]
    return (
        _table(headers, rows, [False, True, True, True, True, True])
        + "\n"
        + _note(
            "Differences are BiSSL − baseline in points, paired by seed; positive favours BiSSL. "
            "The interval is Student-t; both tests are two-sided."
        )
    )


def _probes_section(results: Mapping[str, Any]) -> str:
    probes = _as_mapping(results.get("probes"))
    names = _arm_names(probes)
    if not names:
        return _note("No probe was recorded.")
    rows = [
        [
            arm_label(name),
            _fixed(_as_mapping(probes[name]).get("knn_top1")),
            _fixed(_as_mapping(probes[name]).get("probe_top1")),
        ]
        for name in names
    ]
    return (
        _table(["Arm", "k-NN top-1", "Linear-probe top-1"], rows, [False, True, True])
        + "\n"
        + _note("Frozen backbone features on the downstream task, before fine-tuning (percent).")
    )


def _tsne_section(results: Mapping[str, Any], run_dir: Path) -> str:
    relative = _as_mapping(results.get("figures")).get("tsne")
    if not relative:
        return _note("No t-SNE figure was produced for this run.")
    return _embedded_file(
        run_dir, str(relative), "t-SNE of frozen downstream features, baseline beside BiSSL"
    )


def _extra_figures_section(results: Mapping[str, Any], run_dir: Path) -> str:
    """Figure files named in results.json besides the t-SNE, so that none is silently dropped."""
    extra = {
        key: value for key, value in _as_mapping(results.get("figures")).items() if key != "tsne" and value
    }
    if not extra:
        return ""
    body = "\n".join(
        f"<h3>{_escape(key)}</h3>\n{_embedded_file(run_dir, str(value), key)}" for key, value in extra.items()
    )
    return _section("figures", "Other figures", body)


def _curves_section(results: Mapping[str, Any]) -> str:
    curves = _as_mapping(results.get("curves"))
    parts = [
        "<h3>Bilevel stage</h3>",
        _bilevel_figure(_as_list(curves.get("bilevel"))),
        "<h3>Pretraining</h3>",
        _pretrain_figure(_as_list(curves.get("pretrain"))),
        "<h3>Fine-tuning (seed 0)</h3>",
        _finetune_figure(_as_mapping(curves.get("finetune"))),
    ]
    return "\n".join(parts)


def _bilevel_figure(points: list[Any]) -> str:
    if not points:
        return _note("No bilevel curve was recorded (it exists only when the BiSSL arm ran).")
    from matplotlib import ticker

    x_key = "alternation"
    panels: list[tuple[str, str, list[tuple[str, str, str]]]] = [
        ("Lower level", "lower loss", [("lower_loss", "lower loss", "#4c72b0")]),
        (
            "Upper level (downstream loss)",
            "loss",
            [("upper_loss_lower", "through θ_P", "#dd8452"), ("upper_loss_upper", "through θ_D", "#55a868")],
        ),
        ("‖θ_P − θ_D‖", "distance", [("distance", "‖θ_P − θ_D‖", "#8172b3")]),
        ("CG residual", "residual", [("cg_residual", "residual", "#c44e52")]),
        (
            "Seconds per alternation",
            "seconds",
            [("lower_seconds", "lower phase", "#4c72b0"), ("upper_seconds", "upper phase", "#dd8452")],
        ),
        ("Validation top-1 (θ_D, φ_D)", "percent", [("val_top1", "val top-1", "#55a868")]),
    ]
    drawn = [
        panel
        for panel in panels
        if any(_has_values(_series(points, x_key, key)[1]) for key, _, _ in panel[2])
    ]
    if not drawn:
        return _note("The bilevel curve holds no numbers.")
    columns = 3
    rows = math.ceil(len(drawn) / columns)
    figure, axes = _new_figure(11.5, 3.2 * rows, rows, columns, right_margin=0.8, column_gap=0.6)
    for axis, (title, y_label, lines) in zip(axes, drawn):
        positive = True
        for key, label, colour in lines:
            xs, ys = _series(points, x_key, key)
            axis.plot(xs, ys, marker="o", markersize=2.5, lw=1.4, color=colour, label=label)
            positive = positive and all(value > 0 for value in ys if math.isfinite(value))
        if title == "Lower level":
            xs, regulariser = _series(points, x_key, "regulariser")
            if _has_values(regulariser):
                twin = axis.twinx()
                twin.plot(xs, regulariser, lw=1.2, ls="--", color=REGULARISER_COLOUR)
                twin.set_ylabel("regulariser", color=REGULARISER_COLOUR)
                twin.tick_params(axis="y", colors=REGULARISER_COLOUR)
        elif len(lines) > 1:
            axis.legend(fontsize="small", frameon=False)
        _style_axis(axis, title, "alternation", y_label)
        if title == "Lower level":
            axis.yaxis.label.set_color(lines[0][2])
        if title == "CG residual" and positive:
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(ticker.LogFormatter())
            axis.yaxis.set_minor_formatter(
                ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
            )
    for axis in axes[len(drawn) :]:
        axis.set_visible(False)
    caption = (
        "Values per alternation. Lower level: the lower loss (solid, left axis) and the regulariser "
        "(λ/2)‖θ_P − θ_D‖² (dashed, right axis). Upper level: the downstream loss with the upper head on the "
        "lower backbone θ_P and on the upper backbone θ_D."
    )
    return _figure_html(figure, "learning curves of the bilevel stage", caption)


def _curvature_section(results: Mapping[str, Any]) -> str:
    """Curves of the curvature diagnostics over alternations (``bilevel.diagnose_every``), or a note saying
    that the bilevel metrics hold none."""
    points = [
        _as_mapping(point)
        for point in _as_list(_as_mapping(results.get("curves")).get("bilevel"))
        if _number(_as_mapping(point).get("lambda_min")) is not None
    ]
    if not points:
        return _note(
            "No curvature diagnostics were recorded: they exist when the BiSSL arm ran with "
            "bilevel.diagnose_every > 0 (docs/implicit.md)."
        )
    from matplotlib import ticker

    lam = _number(_as_mapping(_as_mapping(results.get("config")).get("bilevel")).get("lam")) or 0.0
    x_key = "alternation"
    xs, damping = _series(points, x_key, "damping")
    threshold = [-(lam + value) for value in damping]
    panels: list[tuple[str, str, list[tuple[str, list[float], str, str]]]] = [
        (
            "λ_min of the curvature",
            "eigenvalue",
            [
                ("λ_min", _series(points, x_key, "lambda_min")[1], "#4c72b0", "-"),
                ("−(λ+δ)", threshold, "#c44e52", "--"),
            ],
        ),
        (
            "λ_max of the curvature",
            "eigenvalue",
            [("λ_max", _series(points, x_key, "lambda_max")[1], "#dd8452", "-")],
        ),
        (
            "Ritz values below −(λ+δ)",
            "count",
            [("count", _series(points, x_key, "ritz_below")[1], "#8172b3", "-")],
        ),
        (
            "True relative residual ‖v − A x‖/‖v‖",
            "residual",
            [("first upper step", _series(points, x_key, "true_residual")[1], "#c44e52", "-")],
        ),
        (
            "cos(x, v)",
            "cosine",
            [("first upper step", _series(points, x_key, "cosine_first_order")[1], "#55a868", "-")],
        ),
        ("Damping δ", "δ", [("δ", damping, "#937860", "-")]),
    ]
    drawn = [panel for panel in panels if any(_has_values(values) for _, values, _, _ in panel[2])]
    columns = 3
    rows = math.ceil(len(drawn) / columns)
    figure, axes = _new_figure(11.5, 3.2 * rows, rows, columns, right_margin=0.8, column_gap=0.6)
    for axis, (title, y_label, lines) in zip(axes, drawn):
        for label, values, colour, style in lines:
            axis.plot(xs, values, marker="o", markersize=3, lw=1.4, ls=style, color=colour, label=label)
        if len(lines) > 1:
            axis.legend(fontsize="small", frameon=False)
        _style_axis(axis, title, "alternation", y_label)
        if title.startswith("True relative residual") and all(
            value > 0 for value in lines[0][1] if math.isfinite(value)
        ):
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axis.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    for axis in axes[len(drawn) :]:
        axis.set_visible(False)
    definite = [point.get("positive_definite") for point in points]
    known = [value for value in definite if isinstance(value, bool)]
    last = points[-1]
    rows_html = [
        [
            _count(last.get("alternation")),
            _general(last.get("lambda_min")),
            _general(last.get("lambda_max")),
            _count(last.get("ritz_below")),
            "n/a"
            if not isinstance(last.get("positive_definite"), bool)
            else ("yes" if last["positive_definite"] else "no"),
            _general(last.get("true_residual")),
            _general(last.get("cosine_first_order")),
            _general(last.get("damping")),
        ]
    ]
    table = _table(
        [
            "Alternation",
            "λ_min",
            "λ_max",
            "Below −(λ+δ)",
            "Positive definite",
            "True residual",
            "cos(x, v)",
            "δ",
        ],
        rows_html,
        [True, True, True, True, False, True, True, True],
    )
    caption = (
        "Lanczos estimates of the curvature's extreme eigenvalues on each diagnosed alternation's Hessian batch, "
        "the number of Ritz values below −(λ+δ) (each makes I + H/(λ+δ) indefinite), and for the first upper "
        "step the solver's true relative residual on its own system and the cosine between the solved backbone "
        "gradient x and the first-order one v."
    )
    note = _note(
        f"I + H/(λ+δ) was positive definite at {sum(known)} of {len(known)} diagnosed alternations; "
        "the table shows the last one."
    )
    return "\n".join(
        [_figure_html(figure, "curvature diagnostics of the bilevel stage", caption), table, note]
    )


def _pretrain_figure(points: list[Any]) -> str:
    xs, ys = _series(points, "step", "loss")
    if not _has_values(ys):
        return _note("No pretraining curve was recorded (the pretext checkpoint may have been loaded).")
    figure, (axis,) = _new_figure(6.0, 3.2)
    axis.plot(xs, ys, lw=1.4, color="#4c72b0")
    _style_axis(axis, "Pretext loss", "step", "loss")
    return _figure_html(figure, "pretraining loss per step")


def _finetune_figure(curves: Mapping[str, Any]) -> str:
    names = _arm_names(curves)
    drawn = {name: _as_list(curves[name]) for name in names if _as_list(curves[name])}
    if not drawn:
        return _note("No fine-tuning curve was recorded.")
    figure, (validation_axis, loss_axis) = _new_figure(11.0, 3.4, columns=2)
    for position, (name, points) in enumerate(drawn.items()):
        colour = _arm_colour(name, position)
        xs, accuracy = _series(points, "epoch", "val_top1")
        validation_axis.plot(xs, accuracy, lw=1.5, color=colour, label=arm_label(name))
        xs, loss = _series(points, "epoch", "train_loss")
        loss_axis.plot(xs, loss, lw=1.5, color=colour, label=arm_label(name))
    _style_axis(validation_axis, "Validation top-1", "epoch", "percent")
    _style_axis(loss_axis, "Training loss", "epoch", "loss")
    validation_axis.legend(fontsize="small", frameon=False)
    loss_axis.legend(fontsize="small", frameon=False)
    return _figure_html(
        figure, "fine-tuning curves of seed 0 per arm", "Seed 0 of each arm at its chosen lr and wd."
    )


def _search_section(results: Mapping[str, Any]) -> str:
    parts = []
    for name, arm in _ordered_arms(results).items():
        search = _as_mapping(arm.get("search"))
        trials = [_as_mapping(trial) for trial in _as_list(search.get("trials"))]
        parts.append(f"<h3>{_escape(arm_label(name))}</h3>")
        if not trials:
            parts.append(_note("No search trial was recorded."))
            continue

        def rank(trial: Mapping[str, Any]) -> tuple[bool, float]:
            value = _number(trial.get("value"))
            return (value is None, -(value or 0.0))

        shown = sorted(trials, key=rank)[:TOP_TRIALS]
        rows = [
            [
                _count(trial.get("number")),
                _general(trial.get("lr")),
                _general(trial.get("weight_decay")),
                _fixed(trial.get("value")),
                str(trial.get("state") or "n/a"),
            ]
            for trial in shown
        ]
        states: dict[str, int] = {}
        for trial in trials:
            state = str(trial.get("state") or "n/a")
            states[state] = states.get(state, 0) + 1
        counts = ", ".join(f"{state} {count}" for state, count in states.items())
        parts.append(
            _table(
                ["Trial", "lr", "Weight decay", "Validation value", "State"],
                rows,
                [True, True, True, True, False],
            )
        )
        parts.append(_note(f"Best {len(shown)} of {len(trials)} trials by validation value ({counts})."))
    return "\n".join(parts)


def _timings_section(results: Mapping[str, Any]) -> str:
    timings = _as_mapping(results.get("timings"))
    if not timings:
        return _note("No wall time was recorded.")
    total = sum(value for value in (_number(seconds) for seconds in timings.values()) if value is not None)
    rows = []
    for stage, seconds in timings.items():
        number = _number(seconds)
        share = "n/a" if number is None or total <= 0 else f"{100 * number / total:.1f}%"
        rows.append([str(stage), _fixed(seconds, 1), _duration(seconds), share])
    rows.append(["total", f"{total:.1f}", _duration(total), "100.0%" if total > 0 else "n/a"])
    parts = [_table(["Stage", "Seconds", "h:mm:ss", "Share"], rows, [False, True, True, True])]
    bilevel = _as_list(_as_mapping(results.get("curves")).get("bilevel"))
    lower = [value for value in _series(bilevel, "alternation", "lower_seconds")[1] if math.isfinite(value)]
    upper = [value for value in _series(bilevel, "alternation", "upper_seconds")[1] if math.isfinite(value)]
    if lower and upper:
        parts.append(
            _note(
                f"Bilevel stage, mean per alternation: lower phase {sum(lower) / len(lower):.3f} s, "
                f"upper phase {sum(upper) / len(upper):.3f} s."
            )
        )
    return "\n".join(parts)
