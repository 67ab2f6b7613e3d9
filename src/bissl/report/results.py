"""Reading and checking results.json, and the accessors every part of the report reads it through."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bissl.errors import BisslError

RESULTS_FILE = "results.json"
ARM_ORDER = ("baseline", "bissl")
ARM_LABELS = {"baseline": "Baseline", "bissl": "BiSSL"}
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


class _Malformed(Exception):
    """A structural problem in results.json; its message names the offending key."""


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


def as_number(value: Any) -> float | None:
    """A finite float, or None for null, NaN, infinities and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _interval(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, list) and len(value) == 2:
        return as_number(value[0]), as_number(value[1])
    return None, None


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def ordered_arms(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The arms, baseline then BiSSL, then any other name in file order."""
    arms = as_mapping(results.get("arms"))
    return {name: as_mapping(arms[name]) for name in arm_names(arms)}


def arm_names(by_arm: Mapping[str, Any]) -> list[str]:
    """The keys of a per-arm mapping, baseline then BiSSL, then any other name in file order."""
    return [name for name in ARM_ORDER if name in by_arm] + [name for name in by_arm if name not in ARM_ORDER]


def _metric_summary(arm: Mapping[str, Any], metric: str) -> Mapping[str, Any]:
    return as_mapping(as_mapping(arm.get("summary")).get(metric))


def _test_metrics(results: Mapping[str, Any]) -> list[str]:
    """Every test metric any arm reports (summary or seeds), the primary one first."""
    found: list[str] = []
    for arm in ordered_arms(results).values():
        keys = list(as_mapping(arm.get("summary")))
        for seed in as_list(arm.get("seeds")):
            keys.extend(as_mapping(seed))
        found.extend(key for key in keys if key.startswith("test_") and key not in found)
    primary = primary_metric_key(results)
    return [primary, *sorted(key for key in found if key != primary)]


def _seed_values(arm: Mapping[str, Any], metric: str) -> dict[int, float]:
    """{seed: value} of one metric; seeds without a recorded number are left out."""
    values: dict[int, float] = {}
    for position, entry in enumerate(as_list(arm.get("seeds"))):
        record = as_mapping(entry)
        seed = as_number(record.get("seed"))
        value = as_number(record.get(metric))
        if value is not None:
            values[position if seed is None else round(seed)] = value
    return values
