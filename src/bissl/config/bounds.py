"""Allowed values of numeric config fields: :class:`Range` and the field metadata that declares one.

A field says what it allows with ``field(metadata=at_least(1))`` (or ``above``, ``within``, ``one_of``, or one of
the named rules below); :mod:`bissl.config.validation` checks every loaded value against it, and the error
names the key and the allowed values in one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bissl.errors import ConfigError

RANGE = "range"
"""Key of a field's ``metadata`` that holds its :class:`Range`."""


@dataclass(frozen=True)
class Range:
    """The values a numeric config field may take (each element, for a list of numbers).

    Bounds are inclusive unless marked open; ``choices`` lists the only allowed values instead. A float is
    always required to be finite."""

    low: int | float | None = None
    """The smallest allowed value (null: no lower bound)."""
    high: int | float | None = None
    """The largest allowed value (null: no upper bound)."""
    low_open: bool = False
    """The lower bound itself is excluded."""
    high_open: bool = False
    """The upper bound itself is excluded."""
    choices: tuple[int, ...] = ()
    """The only allowed values, in place of bounds (empty: bounds apply)."""
    note: str = ""
    """Added in parentheses to the error, e.g. what 0 means."""

    def allows(self, value: int | float) -> bool:
        """Whether ``value`` (a finite number) is allowed."""
        if not math.isfinite(value):
            return False
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The allowed values in words: ``> 0``, ``>= 1``, ``in [0, 1]``, ``in (0, 1)``, ``1 or 3``, ``finite``."""
        if self.choices:
            names = [str(c) for c in self.choices]
            return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "finite"

    def check(self, key: str, value: Any) -> None:
        """Raise ConfigError naming ``key`` when ``value`` (a number, or a list of them) is not allowed."""
        if isinstance(value, list):
            for index, element in enumerate(value):
                self.check(f"{key}[{index}]", element)
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or self.allows(value):
            return
        allowed = self.describe()
        if not math.isfinite(value):
            allowed = "finite" if allowed == "finite" else f"finite and {allowed}"
        note = f" ({self.note})" if self.note else ""
        raise ConfigError(f"config key '{key}' must be {allowed}{note}, got {value}")


def _ranged(rule: Range) -> Mapping[str, Range]:
    return {RANGE: rule}


def at_least(low: int | float, note: str = "") -> Mapping[str, Range]:
    """Field metadata: the value is >= ``low``."""
    return _ranged(Range(low=low, note=note))


def above(low: int | float, note: str = "") -> Mapping[str, Range]:
    """Field metadata: the value is > ``low``."""
    return _ranged(Range(low=low, low_open=True, note=note))


def within(
    low: int | float, high: int | float, *, low_open: bool = False, high_open: bool = False, note: str = ""
) -> Mapping[str, Range]:
    """Field metadata: the value lies between ``low`` and ``high`` (inclusive unless marked open)."""
    return _ranged(Range(low=low, high=high, low_open=low_open, high_open=high_open, note=note))


def one_of(*choices: int, note: str = "") -> Mapping[str, Range]:
    """Field metadata: the value is one of ``choices``."""
    return _ranged(Range(choices=choices, note=note))


COUNT = at_least(1)
"""Steps, epochs, sizes, widths: a whole number >= 1."""
NON_NEGATIVE = at_least(0)
"""Weight decays, damping, strengths: a finite number >= 0."""
POSITIVE = above(0)
"""Learning rates, temperatures: a finite number > 0."""
PROBABILITY = within(0, 1)
"""Probabilities and fractions of a peak learning rate: in [0, 1]."""
MOMENTUM = within(0, 1, high_open=True)
"""SGD and LARS momentum: in [0, 1)."""
SEED = within(0, 2**32 - 1)
"""Seeds: whole numbers NumPy, torch and Python's random all take."""
PRETEXT_BATCH = at_least(2, "a pretext batch needs two images")
"""Images per pretext batch: the contrastive and BatchNorm statistics need two."""
CROP_SCALE = within(0, 1, low_open=True)
"""Area fractions of a random resized crop: in (0, 1]."""
