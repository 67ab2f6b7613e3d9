"""The curvature section: Lanczos spectra, solver residuals and the implicit-gradient diagnostics."""

from __future__ import annotations

import math

from bissl.report.figures import figure_html, has_values, new_figure, series, style_axis
from bissl.report.markup import count_text, general_text, note_html, table_html
from bissl.report.results import as_number
from bissl.report.schema import CompareResults


def curvature_section(results: CompareResults) -> str:
    """Curves of the curvature diagnostics over alternations (``bilevel.diagnose_every``), or a note saying
    that the bilevel metrics hold none."""
    points = [
        point for point in results["curves"]["bilevel"] if as_number(point.get("lambda_min")) is not None
    ]
    if not points:
        return note_html(
            "No curvature diagnostics were recorded: they exist when the BiSSL arm ran with "
            "bilevel.diagnose_every > 0 (docs/implicit.md)."
        )
    from matplotlib import ticker

    bilevel = results["config"].get("bilevel")
    lam = (as_number(bilevel.get("lam")) if isinstance(bilevel, dict) else None) or 0.0
    x_key = "alternation"
    xs, damping = series(points, x_key, "damping")
    threshold = [-(lam + value) for value in damping]
    panels: list[tuple[str, str, list[tuple[str, list[float], str, str]]]] = [
        (
            "λ_min of the curvature",
            "eigenvalue",
            [
                ("λ_min", series(points, x_key, "lambda_min")[1], "#4c72b0", "-"),
                ("−(λ+δ)", threshold, "#c44e52", "--"),
            ],
        ),
        (
            "λ_max of the curvature",
            "eigenvalue",
            [("λ_max", series(points, x_key, "lambda_max")[1], "#dd8452", "-")],
        ),
        (
            "Ritz values below −(λ+δ)",
            "count",
            [("count", series(points, x_key, "ritz_below")[1], "#8172b3", "-")],
        ),
        (
            "True relative residual ‖v − A x‖/‖v‖",
            "residual",
            [("first upper step", series(points, x_key, "true_residual")[1], "#c44e52", "-")],
        ),
        (
            "cos(x, v)",
            "cosine",
            [("first upper step", series(points, x_key, "cosine_first_order")[1], "#55a868", "-")],
        ),
        ("Damping δ", "δ", [("δ", damping, "#937860", "-")]),
    ]
    drawn = [panel for panel in panels if any(has_values(values) for _, values, _, _ in panel[2])]
    columns = 3
    rows = math.ceil(len(drawn) / columns)
    figure, axes = new_figure(11.5, 3.2 * rows, rows, columns, right_margin=0.8, column_gap=0.6)
    for axis, (title, y_label, lines) in zip(axes, drawn):
        for label, values, colour, style in lines:
            axis.plot(xs, values, marker="o", markersize=3, lw=1.4, ls=style, color=colour, label=label)
        if len(lines) > 1:
            axis.legend(fontsize="small", frameon=False)
        style_axis(axis, title, "alternation", y_label)
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
            count_text(last.get("alternation")),
            general_text(last.get("lambda_min")),
            general_text(last.get("lambda_max")),
            count_text(last.get("ritz_below")),
            "n/a"
            if not isinstance(last.get("positive_definite"), bool)
            else ("yes" if last["positive_definite"] else "no"),
            general_text(last.get("true_residual")),
            general_text(last.get("cosine_first_order")),
            general_text(last.get("damping")),
        ]
    ]
    table = table_html(
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
    note = note_html(
        f"I + H/(λ+δ) was positive definite at {sum(known)} of {len(known)} diagnosed alternations; "
        "the table shows the last one."
    )
    return "\n".join(
        [figure_html(figure, "curvature diagnostics of the bilevel stage", caption), table, note]
    )
