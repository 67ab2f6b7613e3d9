"""The accessors the sections of the compare report read results.json through (its schema, reading and
writing: ``bissl.report.schema``): arm order and labels, metric names, finite numbers, per-seed values."""

from __future__ import annotations

import math
from collections.abc import Mapping

from bissl.report.schema import CompareArm, CompareResults, SeedStatistics

ARM_ORDER = ("baseline", "bissl")
ARM_LABELS = {"baseline": "Baseline", "bissl": "BiSSL"}


def primary_metric_key(results: CompareResults) -> str:
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


def as_number(value: object) -> float | None:
    """A finite float, or None for null, NaN, infinities and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def interval(value: list[float | None]) -> tuple[float | None, float | None]:
    """(low, high) of a written [low, high] interval; (None, None) when it is not one."""
    if len(value) == 2:
        return as_number(value[0]), as_number(value[1])
    return None, None


def ordered_arms(results: CompareResults) -> dict[str, CompareArm]:
    """The arms, baseline then BiSSL, then any other name in file order."""
    arms = results["arms"]
    return {name: arms[name] for name in arm_names(arms)}


def arm_names(by_arm: Mapping[str, object]) -> list[str]:
    """The keys of a per-arm mapping, baseline then BiSSL, then any other name in file order."""
    return [name for name in ARM_ORDER if name in by_arm] + [name for name in by_arm if name not in ARM_ORDER]


def metric_summary(arm: CompareArm, metric: str) -> SeedStatistics:
    """Mean ± std over seeds of one metric (all null when the arm has none)."""
    return arm["summary"].get(metric) or {"mean": None, "std": None, "n": None, "values": []}


def reported_metrics(results: CompareResults) -> list[str]:
    """Every test metric any arm reports (summary or seeds), the primary one first."""
    found: list[str] = []
    for arm in ordered_arms(results).values():
        keys = list(arm["summary"])
        for seed in arm["seeds"]:
            keys.extend(seed)
        found.extend(key for key in keys if key.startswith("test_") and key not in found)
    primary = primary_metric_key(results)
    return [primary, *sorted(key for key in found if key != primary)]


def seed_values(arm: CompareArm, metric: str) -> dict[int, float]:
    """{seed: value} of one metric; seeds without a recorded number are left out."""
    values: dict[int, float] = {}
    for position, record in enumerate(arm["seeds"]):
        seed = as_number(record.get("seed"))
        value = as_number(record.get(metric))
        if value is not None:
            values[position if seed is None else round(seed)] = value
    return values
