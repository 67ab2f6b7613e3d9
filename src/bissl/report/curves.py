"""The training-curve section: bilevel alternations, pretraining loss and fine-tuning curves."""

from __future__ import annotations

import math

from bissl.report.figures import (
    REGULARISER_COLOUR,
    arm_colour,
    figure_html,
    has_values,
    new_figure,
    series,
    style_axis,
)
from bissl.report.markup import note_html
from bissl.report.results import arm_label, arm_names
from bissl.report.schema import CompareResults, Record


def curves_section(results: CompareResults) -> str:
    curves = results["curves"]
    parts = [
        "<h3>Bilevel stage</h3>",
        _bilevel_figure(curves["bilevel"]),
        "<h3>Pretraining</h3>",
        _pretrain_figure(curves["pretrain"]),
        "<h3>Fine-tuning (seed 0)</h3>",
        _finetune_figure(curves["finetune"]),
    ]
    return "\n".join(parts)


def _bilevel_figure(points: list[Record]) -> str:
    if not points:
        return note_html("No bilevel curve was recorded (it exists only when the BiSSL arm ran).")
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
        (
            "Solver residual",
            "residual",
            [
                ("solver_residual", "residual", "#c44e52"),
                ("cg_residual", "residual (runs before the rename)", "#c44e52"),
            ],
        ),
        (
            "Seconds per alternation",
            "seconds",
            [("lower_seconds", "lower phase", "#4c72b0"), ("upper_seconds", "upper phase", "#dd8452")],
        ),
        ("Validation top-1 (θ_D, φ_D)", "percent", [("val_top1", "val top-1", "#55a868")]),
    ]
    drawn = [
        panel for panel in panels if any(has_values(series(points, x_key, key)[1]) for key, _, _ in panel[2])
    ]
    if not drawn:
        return note_html("The bilevel curve holds no numbers.")
    columns = 3
    rows = math.ceil(len(drawn) / columns)
    figure, axes = new_figure(11.5, 3.2 * rows, rows, columns, right_margin=0.8, column_gap=0.6)
    for axis, (title, y_label, lines) in zip(axes, drawn):
        positive = True
        for key, label, colour in lines:
            xs, ys = series(points, x_key, key)
            axis.plot(xs, ys, marker="o", markersize=2.5, lw=1.4, color=colour, label=label)
            positive = positive and all(value > 0 for value in ys if math.isfinite(value))
        if title == "Lower level":
            xs, regulariser = series(points, x_key, "regulariser")
            if has_values(regulariser):
                twin = axis.twinx()
                twin.plot(xs, regulariser, lw=1.2, ls="--", color=REGULARISER_COLOUR)
                twin.set_ylabel("regulariser", color=REGULARISER_COLOUR)
                twin.tick_params(axis="y", colors=REGULARISER_COLOUR)
        elif len(lines) > 1:
            axis.legend(fontsize="small", frameon=False)
        style_axis(axis, title, "alternation", y_label)
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
    return figure_html(figure, "learning curves of the bilevel stage", caption)


def _pretrain_figure(points: list[Record]) -> str:
    xs, ys = series(points, "step", "loss")
    if not has_values(ys):
        return note_html("No pretraining curve was recorded (the pretext checkpoint may have been loaded).")
    figure, (axis,) = new_figure(6.0, 3.2)
    axis.plot(xs, ys, lw=1.4, color="#4c72b0")
    style_axis(axis, "Pretext loss", "step", "loss")
    return figure_html(figure, "pretraining loss per step")


def _finetune_figure(curves: dict[str, list[Record]]) -> str:
    drawn = {name: curves[name] for name in arm_names(curves) if curves[name]}
    if not drawn:
        return note_html("No fine-tuning curve was recorded.")
    figure, (validation_axis, loss_axis) = new_figure(11.0, 3.4, columns=2)
    for position, (name, points) in enumerate(drawn.items()):
        colour = arm_colour(name, position)
        xs, accuracy = series(points, "epoch", "val_top1")
        validation_axis.plot(xs, accuracy, lw=1.5, color=colour, label=arm_label(name))
        xs, loss = series(points, "epoch", "train_loss")
        loss_axis.plot(xs, loss, lw=1.5, color=colour, label=arm_label(name))
    style_axis(validation_axis, "Validation top-1", "epoch", "percent")
    style_axis(loss_axis, "Training loss", "epoch", "loss")
    validation_axis.legend(fontsize="small", frameon=False)
    loss_axis.legend(fontsize="small", frameon=False)
    return figure_html(
        figure, "fine-tuning curves of seed 0 per arm", "Seed 0 of each arm at its chosen lr and wd."
    )
