"""The schema of results.json, of ``bissl compare`` and of ``bissl study``: one TypedDict per block, and the one
place that writes the file and reads it back.

Writing stores the blocks as the command built them (``RunDir.write_json``: JSON, indent 2), so the file is
what these commands have always written. Reading checks the shape and fills in what an older file lacks: a
block that is missing or null becomes empty ({} or []) and a missing number, text or flag becomes null, so
that every block a TypedDict names is there for the code that reads it. Only the top-level keys a command
has always written are required. Blocks whose keys depend on what has finished (a study's per-seed block) are
``total=False``: their keys are checked when present and left out otherwise. Keys the schema does not name
are kept as they are. A missing key or a value of the wrong type ends in one line naming the file and the key.
"""

from __future__ import annotations

import functools
import json
import math
import types
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    TypedDict,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from bissl.errors import BisslError

if TYPE_CHECKING:
    from bissl.runtime import RunDir  # not imported to read: bissl.runtime loads torch

RESULTS_FILE: Final = "results.json"

Scalar = float | str | bool | None
Record = dict[str, Scalar]
"""One flat record (a seed run, a search trial, a point of a curve): numbers, text, flags or null."""


# ---------------------------------------------------------------------------------------------------------
# Blocks both commands write


class SeedStatistics(TypedDict):
    """Mean ± sample std over seeds (``bissl.eval.stats.summarize``)."""

    mean: float | None
    std: float | None
    n: int | None
    values: list[float | None]


class PairedDifference(TypedDict):
    """One arm against another over paired seeds (``bissl.eval.stats.paired_comparison``), in points."""

    n: int | None
    mean_difference: float | None
    ci_low: float | None
    ci_high: float | None
    t_pvalue: float | None
    t_pvalue_greater: float | None
    wilcoxon_pvalue: float | None


# ---------------------------------------------------------------------------------------------------------
# bissl compare


class Datasets(TypedDict):
    pretext: str | None
    downstream: str | None


class SearchOutcome(TypedDict):
    """An arm's hyper-parameter search: the chosen setting (``lr``, ``weight_decay``, ``value``, ...) and
    every trial; the search's other entries are carried along."""

    best: dict[str, float | None]
    trials: list[Record]


class CompareArm(TypedDict):
    backbone: str | None
    search: SearchOutcome
    seeds: list[Record]
    summary: dict[str, SeedStatistics]
    """Per test metric (``test_top1``, ...)."""


class CompareDifference(PairedDifference):
    """BiSSL − baseline on one test metric; ``ci95`` is [low, high] ([] when not written)."""

    ci95: list[float | None]


class Curves(TypedDict):
    pretrain: list[Record]
    bilevel: list[Record]
    finetune: dict[str, list[Record]]
    """Per arm, the first seed's fine-tuning curve."""


class CompareResults(TypedDict):
    title: str
    created: str
    primary_metric: str
    """``top1`` or ``map``; the per-seed key is ``test_<primary_metric>``."""
    datasets: Datasets
    config: dict[str, Any]
    arms: dict[str, CompareArm]
    comparison: dict[str, CompareDifference]
    probes: dict[str, dict[str, float | None]]
    """Per arm: ``knn_top1``, ``probe_top1`` (or ``probe_map``), ... of the frozen backbone."""
    figures: dict[str, str]
    """Figure files relative to the run folder (``tsne``, ...); the one top-level key that may be missing."""
    curves: Curves
    timings: dict[str, float | None]
    fairness: str


COMPARE_REQUIRED: Final = tuple(key for key in CompareResults.__annotations__ if key != "figures")


# ---------------------------------------------------------------------------------------------------------
# bissl study


class StudySeed(TypedDict, total=False):
    """One arm (or control) at one pipeline seed, as far as its parts have finished: ``test_top1`` is the mean
    over the fine-tuning seeds of its own search, ``test_top1_shared`` at the reference arm's setting."""

    test_top1: float | None
    finetune_values: list[float | None]
    finetune_seeds: list[int]
    lr: float | None
    weight_decay: float | None
    test_top1_shared: float | None
    shared_values: list[float | None]
    knn_top1: float | None
    probe_top1: float | None
    seconds: dict[str, float]
    """Wall time per part of this arm and seed."""
    total_seconds: float


class StudyArmSpec(TypedDict):
    """The arm as configured (``bissl.config.StudyArm``); older files lack ``seeds`` and ``own_search``."""

    name: str | None
    init: str | None
    extra_pretext: bool | None
    bilevel: bool | None
    overrides: list[str]
    seeds: int | None
    own_search: bool | None


class StudyArmResults(TypedDict):
    spec: StudyArmSpec
    seeds: dict[str, StudySeed]
    """Per pipeline seed (as text)."""
    summary: dict[str, SeedStatistics]
    seconds_per_seed: float | None
    complete: bool | None


class StudyControl(TypedDict):
    """A control of the reference arm (the BatchNorm recalibration): alignment numbers only."""

    of: str | None
    seeds: dict[str, StudySeed]
    summary: dict[str, SeedStatistics]


class ReferenceDifference(PairedDifference):
    """An arm − the reference over the pipeline seeds both have, Holm-adjusted over the arms compared
    (``bissl.eval.stats.compare_to_reference``)."""

    seeds: list[int]
    t_pvalue_holm: float | None
    wilcoxon_pvalue_holm: float | None


class Hypothesis(PairedDifference):
    """A pre-registered one-sided test, Holm-adjusted over the hypotheses."""

    arm: str | None
    against: str | None
    seeds: list[int]
    t_pvalue_greater_holm: float | None


class PrimaryHypotheses(TypedDict):
    """H1 (the primary arm beats the reference) and H2 (it beats matched extra pretext steps); written as {}
    in a study without a primary arm (read back with no tests)."""

    arm: str | None
    statistic: str | None
    alpha: float | None
    tests: dict[str, Hypothesis]


class VersusMatched(TypedDict):
    """BiSSL arms against the matched-compute arm (extra pretext steps); written as {} without one."""

    reference: str | None
    test_top1: dict[str, ReferenceDifference]


class StudyTimings(TypedDict):
    pretrain: float | None
    parts: dict[str, float]
    total_seconds: float | None


class StudyResults(TypedDict):
    title: str | None
    created: str | None
    primary_metric: str | None
    reference: str
    pipeline_seeds: list[int]
    finetune_seeds: int | None
    pretext_checkpoint: str | None
    arms: dict[str, StudyArmResults]
    controls: dict[str, StudyControl]
    comparison: dict[str, dict[str, ReferenceDifference]]
    """Per statistic (``test_top1``, ``test_top1_shared``, ``knn_top1``, ``probe_top1``), per arm."""
    primary: PrimaryHypotheses
    shared_hyperparameters: bool | None
    versus_matched: VersusMatched
    timings: StudyTimings
    finished_runs: int | None
    expected_runs: int | None
    complete: bool | None
    config: dict[str, Any]


STUDY_REQUIRED: Final = ("arms", "reference")


def seed_value(block: StudySeed, key: str) -> float | None:
    """A number of a per-seed block by a key chosen at run time (None when absent or null)."""
    value = cast("Mapping[str, object]", block).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------------------
# Writing


def write_compare_results(run: RunDir, results: CompareResults) -> CompareResults:
    """Write ``bissl compare``'s results.json; returns the results as a reader of the file sees them."""
    path = run.write_json(RESULTS_FILE, cast("dict[str, Any]", results))
    return compare_results(_plain(results), path)


def write_study_results(run: RunDir, results: StudyResults) -> StudyResults:
    """Write ``bissl study``'s results.json; returns the results as a reader of the file sees them."""
    path = run.write_json(RESULTS_FILE, cast("dict[str, Any]", results))
    return study_results(_plain(results), path)


def _plain(value: Any) -> Any:
    """``value`` as results.json holds it: tuples as lists, array scalars as numbers, non-finite numbers as
    null (what ``RunDir.write_json`` writes)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(entry) for key, entry in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(entry) for entry in value]
    if not isinstance(value, str | bytes | bool | int | float) and callable(getattr(value, "item", None)):
        value = value.item()  # a NumPy or tensor scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------------------
# Reading


def load_compare_results(run_dir: Path) -> CompareResults:
    """``run_dir/results.json`` of ``bissl compare``, checked; every problem is a one-line BisslError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BisslError(f"{run_dir} is not a folder: pass the folder written by 'bissl compare'")
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise BisslError(f"{path} not found: pass a folder written by 'bissl compare', or run it first")
    return compare_results(_read_json(path, "bissl compare"), path)


def load_study_results(run_dir: Path) -> StudyResults:
    """``run_dir/results.json`` of ``bissl study``, checked; every problem is a one-line BisslError."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise BisslError(f"no {RESULTS_FILE} in '{run_dir}'; run 'bissl study --config FILE --out DIR' first")
    data = _read_json(path, "bissl study")
    if isinstance(data, dict) and "reference" not in data and "fairness" in data:
        raise BisslError(f"'{path}' was written by 'bissl compare', not 'bissl study'; pass a study folder")
    return study_results(data, path)


def compare_results(data: object, path: Path | str = RESULTS_FILE) -> CompareResults:
    """``data`` (results.json as parsed JSON) checked and filled in as a ``CompareResults``; ``path`` names
    the file in the error."""
    if isinstance(data, dict) and "fairness" not in data and "reference" in data:
        raise BisslError(
            f"{path} was written by 'bissl study', which writes its own report.html; pass a folder written by "
            "'bissl compare' (or use 'bissl study-doc' for a study)"
        )
    try:
        checked = _block(data, CompareResults, "", COMPARE_REQUIRED)
        if not checked["arms"]:
            raise _Malformed("arms is empty (it needs 'baseline', 'bissl' or both)")
        for metric, entry in checked["comparison"].items():
            if entry["ci95"] and len(entry["ci95"]) != 2:
                raise _Malformed(f"comparison.{metric}.ci95 must hold two numbers [low, high]")
    except _Malformed as problem:
        raise BisslError(f"{path} is malformed: {problem}; rerun 'bissl compare' to rewrite it") from None
    return checked


def study_results(data: object, path: Path | str = RESULTS_FILE) -> StudyResults:
    """``data`` (results.json as parsed JSON) checked and filled in as a ``StudyResults``."""
    try:
        return _block(data, StudyResults, "", STUDY_REQUIRED)
    except _Malformed as problem:
        raise BisslError(f"{path} is malformed: {problem}; rerun 'bissl study' to rewrite it") from None


def _read_json(path: Path, command: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BisslError(f"{path} is not UTF-8 text: rerun '{command}' to rewrite it") from None
    except json.JSONDecodeError as error:
        raise BisslError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}): rerun '{command}' to rewrite it"
        ) from None


class _Malformed(Exception):
    """A value of results.json that does not fit the schema; its message names the key."""


def _block(value: object, schema: Any, where: str, required: Collection[str] = ()) -> Any:
    """A TypedDict block: every key it names checked and (unless ``total=False``) present afterwards;
    ``required`` keys must be in the file. Keys it does not name are kept."""
    found = _expect(value, dict, "an object", where or "the top level")
    missing = [key for key in required if key not in found]
    if missing:
        names = ", ".join(repr(key) for key in missing)
        raise _Malformed(
            f"{'keys' if len(missing) > 1 else 'key'} {names} {'are' if len(missing) > 1 else 'is'} missing"
            + (f" in {where}" if where else "")
        )
    block = dict(found)
    fields = _fields(schema)
    for key, hint in fields.items():
        place = f"{where}.{key}" if where else key
        if key not in found:
            if key in schema.__required_keys__:
                block[key] = _empty(hint, place)
        elif found[key] is None and _is_container(hint) and key not in required:
            block[key] = _empty(hint, place)
        else:
            block[key] = _value(found[key], hint, place)
    return block


@functools.cache
def _fields(schema: Any) -> dict[str, Any]:
    return get_type_hints(schema)


def _value(value: object, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    if is_typeddict(hint):
        return _block(value, hint, where)
    origin = get_origin(hint)
    if origin is list:
        (item,) = get_args(hint)
        return [
            _value(entry, item, f"{where}[{index}]")
            for index, entry in enumerate(_expect(value, list, "a list", where))
        ]
    if origin is dict:
        _, item = get_args(hint)
        return {
            key: _value(entry, item, f"{where}.{key}")
            for key, entry in _expect(value, dict, "an object", where).items()
        }
    if origin in (Union, types.UnionType):
        return _scalar(
            value,
            [arg for arg in get_args(hint) if arg is not type(None)],
            type(None) in get_args(hint),
            where,
        )
    return _scalar(value, [hint], False, where)


def _scalar(value: object, kinds: list[Any], nullable: bool, where: str) -> object:
    """A number, text or flag of one of ``kinds`` (a container kind when it is the only one), or null."""
    if value is None and nullable:
        return None
    if len(kinds) == 1 and _is_container(kinds[0]):
        return _value(value, kinds[0], where)
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is str and isinstance(value, str):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
    names = {bool: "a boolean", str: "text", float: "a number", int: "a whole number"}
    choices = [names[kind] for kind in kinds] + (["null"] if nullable else [])
    wanted = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
    raise _Malformed(f"{where} must be {wanted}, got {_json_type(value)}")


def _is_container(hint: Any) -> bool:
    return is_typeddict(hint) or get_origin(hint) in (list, dict)


def _allows_null(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


def _empty(hint: Any, where: str) -> Any:
    """The value a missing (or null) key is read as: null, [], {} or an empty block; a missing key without
    such a value (text, a number, a flag that may not be null) is an error."""
    if _allows_null(hint) or hint is Any:
        return None
    if is_typeddict(hint):
        return _block({}, hint, where)
    if get_origin(hint) is list:
        return []
    if get_origin(hint) is dict:
        return {}
    raise _Malformed(f"{where} is missing")


def _expect(value: object, kind: type, name: str, where: str) -> Any:
    if not isinstance(value, kind):
        raise _Malformed(f"{where} must be {name}, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__
