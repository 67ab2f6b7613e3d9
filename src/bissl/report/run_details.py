"""The run-detail sections: the hyper-parameter search trials and the stage timings."""

from __future__ import annotations

import math

from bissl.report.figures import series
from bissl.report.markup import (
    count_text,
    duration_text,
    escape,
    fixed_text,
    general_text,
    note_html,
    table_html,
)
from bissl.report.results import arm_label, as_number, ordered_arms
from bissl.report.schema import CompareResults, Record

TOP_TRIALS = 10


def search_section(results: CompareResults) -> str:
    parts = []
    for name, arm in ordered_arms(results).items():
        trials = arm["search"]["trials"]
        parts.append(f"<h3>{escape(arm_label(name))}</h3>")
        if not trials:
            parts.append(note_html("No search trial was recorded."))
            continue

        def rank(trial: Record) -> tuple[bool, float]:
            value = as_number(trial.get("value"))
            return (value is None, -(value or 0.0))

        shown = sorted(trials, key=rank)[:TOP_TRIALS]
        rows = [
            [
                count_text(trial.get("number")),
                general_text(trial.get("lr")),
                general_text(trial.get("weight_decay")),
                fixed_text(trial.get("value")),
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
            table_html(
                ["Trial", "lr", "Weight decay", "Validation value", "State"],
                rows,
                [True, True, True, True, False],
            )
        )
        parts.append(note_html(f"Best {len(shown)} of {len(trials)} trials by validation value ({counts})."))
    return "\n".join(parts)


def timings_section(results: CompareResults) -> str:
    timings = results["timings"]
    if not timings:
        return note_html("No wall time was recorded.")
    total = sum(value for value in (as_number(seconds) for seconds in timings.values()) if value is not None)
    rows = []
    for stage, seconds in timings.items():
        number = as_number(seconds)
        share = "n/a" if number is None or total <= 0 else f"{100 * number / total:.1f}%"
        rows.append([str(stage), fixed_text(seconds, 1), duration_text(seconds), share])
    rows.append(["total", f"{total:.1f}", duration_text(total), "100.0%" if total > 0 else "n/a"])
    parts = [table_html(["Stage", "Seconds", "h:mm:ss", "Share"], rows, [False, True, True, True])]
    bilevel = results["curves"]["bilevel"]
    lower = [value for value in series(bilevel, "alternation", "lower_seconds")[1] if math.isfinite(value)]
    upper = [value for value in series(bilevel, "alternation", "upper_seconds")[1] if math.isfinite(value)]
    if lower and upper:
        parts.append(
            note_html(
                f"Bilevel stage, mean per alternation: lower phase {sum(lower) / len(lower):.3f} s, "
                f"upper phase {sum(upper) / len(upper):.3f} s."
            )
        )
    return "\n".join(parts)
