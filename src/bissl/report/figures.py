"""Figures of the report: matplotlib (Agg) set-up, arm colours, and embedding PNGs as base64 data URIs."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bissl.report.markup import escape, note_html
from bissl.report.results import as_number
from bissl.report.schema import RESULTS_FILE, Record

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


ARM_COLOURS = {"baseline": "#4c72b0", "bissl": "#dd8452"}
OTHER_COLOURS = ("#55a868", "#c44e52", "#8172b3", "#937860")
REGULARISER_COLOUR = "#937860"
FIGURE_DPI = 100


def arm_colour(name: str, position: int) -> str:
    return ARM_COLOURS.get(name, OTHER_COLOURS[position % len(OTHER_COLOURS)])


def new_figure(
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
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_png_data_uri(png)}" alt="{escape(alt)}">{caption_html}</figure>'


def figure_html(figure: Figure, alt: str, caption: str = "") -> str:
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


def embedded_file(run_dir: Path, relative: str, alt: str) -> str:
    """An <img> of a figure file named in results.json, or a note saying why it is not shown."""
    path = run_dir / relative
    if not path.is_file():
        return note_html(f"The figure {relative} named in {RESULTS_FILE} was not found in {run_dir}.")
    try:
        png = _png_file(path)
    except (OSError, ValueError, SyntaxError) as error:
        return note_html(f"The figure {relative} could not be read as an image ({error}).")
    return _image_html(png, alt, caption=relative)


def series(points: Sequence[Record], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """x and y of a curve; points without the value become NaN so that the line shows a gap."""
    xs: list[float] = []
    ys: list[float] = []
    for position, point in enumerate(points):
        x = as_number(point.get(x_key))
        y = as_number(point.get(y_key))
        xs.append(float(position) if x is None else x)
        ys.append(math.nan if y is None else y)
    return xs, ys


def has_values(values: Sequence[float]) -> bool:
    return any(math.isfinite(value) for value in values)


def style_axis(axis: Axes, title: str, x_label: str, y_label: str = "") -> None:
    """Title, labels and a light grid; x axes count steps, epochs or alternations, so their ticks are whole."""
    from matplotlib import ticker

    axis.set_title(title, fontsize=10)
    if x_label:
        axis.set_xlabel(x_label)
        axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if y_label:
        axis.set_ylabel(y_label)
    axis.grid(True, alpha=0.3)
