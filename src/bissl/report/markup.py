"""HTML building blocks of the report: the style sheet, escaping, sections, notes, tables and number formatting."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import yaml

from bissl.report.results import as_number
from bissl.report.schema import SeedStatistics

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


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def fixed_text(value: Any, digits: int = 2) -> str:
    number = as_number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def signed_text(value: Any, digits: int = 2) -> str:
    number = as_number(value)
    return "n/a" if number is None else f"{number:+.{digits}f}"


def general_text(value: Any) -> str:
    """Three significant digits, for learning rates and weight decays."""
    number = as_number(value)
    return "n/a" if number is None else f"{number:.3g}"


def count_text(value: Any) -> str:
    number = as_number(value)
    return "n/a" if number is None else str(round(number))


def pvalue_text(value: Any) -> str:
    number = as_number(value)
    if number is None:
        return "n/a"
    return "< 0.001" if number < 0.001 else f"{number:.3f}"


def duration_text(value: Any) -> str:
    """Seconds as h:mm:ss."""
    number = as_number(value)
    if number is None:
        return "n/a"
    minutes, seconds = divmod(round(number), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def interval_text(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"[{low:+.2f}, {high:+.2f}]"


def mean_std_text(summary: SeedStatistics) -> str:
    """ "mean ± std" of a metric over seeds."""
    mean, std = as_number(summary["mean"]), as_number(summary["std"])
    if mean is None:
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} ± n/a"


def section_html(section_id: str, heading: str, body: str) -> str:
    return f'<section id="{escape(section_id)}">\n<h2>{escape(heading)}</h2>\n{body}\n</section>'


def note_html(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def table_html(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """An HTML table from plain-text cells (escaped here); ``numeric`` columns are right-aligned."""

    def cell(tag: str, text: str, column: int) -> str:
        css = ' class="number"' if numeric[column] else ""
        return f"<{tag}{css}>{escape(text)}</{tag}>"

    head = "".join(cell("th", text, column) for column, text in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(cell("td", text, column) for column, text in enumerate(row)) + "</tr>"
        for row in rows
    )
    table = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f'<div class="scroll">{table}</div>'


def config_yaml(config: Any) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
