"""Every numeric config field declares its allowed values, and load time refuses anything outside them."""

from __future__ import annotations

import dataclasses
import math
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest

from bissl.config import (
    Config,
    Range,
    _walk_fields,
    config_from_dict,
    flatten,
    load_config,
    ranges,
    shipped_configs,
    to_dict,
)
from bissl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BOUNDARY_CONTEXT: dict[str, dict[str, Any]] = {
    "bilevel.solver_iterations": {
        "bilevel.solver": "identity"
    },  # 0 iterations only without an iterative solve
}
"""Other values a field's boundary value needs to pass the cross-field checks."""


def _number_type(tp: Any) -> type | None:
    """int or float when the annotation holds numbers (also optional, in a union or as list elements)."""
    origin = get_origin(tp)
    if origin is list:
        return _number_type(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        found = [_number_type(arg) for arg in get_args(tp)]
        return next((t for t in found if t is not None), None)
    if origin is Literal:
        return None
    return tp if tp in (int, float) else None


def _leaf_fields(cls: Any = Config, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> annotation of every leaf field, the fields of a list of dataclasses as ``key[i].field``."""
    leaves: dict[str, Any] = {}
    for key, tp, _ in _walk_fields(cls, prefix):
        if get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
            leaves.update(_leaf_fields(get_args(tp)[0], f"{key}[i]."))
        else:
            leaves[key] = tp
    return leaves


LEAVES = _leaf_fields()
RANGES = ranges()


def _nudge(value: int | float, integer: bool, direction: float) -> int | float:
    """The next number from ``value`` towards ``direction`` (+inf or -inf)."""
    if integer:
        return int(value) + (1 if direction > 0 else -1)
    return math.nextafter(float(value), direction)


def outside(rule: Range, integer: bool) -> list[int | float]:
    """Values just outside ``rule``: at or one step past each bound, missing choices, and non-finite floats."""
    values: list[int | float] = []
    if rule.choices:
        low, high = min(rule.choices), max(rule.choices)
        values += [low - 1, high + 1, *(v for v in range(low, high) if v not in rule.choices)]
    if rule.low is not None:
        values.append(rule.low if rule.low_open else _nudge(rule.low, integer, -math.inf))
    if rule.high is not None:
        values.append(rule.high if rule.high_open else _nudge(rule.high, integer, math.inf))
    if not integer:
        values += [math.inf, -math.inf, math.nan]
    return values


def boundaries(rule: Range, integer: bool) -> list[int | float]:
    """The allowed values closest to each bound (every choice, for a set of choices)."""
    if rule.choices:
        return list(rule.choices)
    values: list[int | float] = []
    if rule.low is not None:
        values.append(_nudge(rule.low, integer, math.inf) if rule.low_open else rule.low)
    if rule.high is not None:
        values.append(_nudge(rule.high, integer, -math.inf) if rule.high_open else rule.high)
    return values


def _with(changes: dict[str, Any]) -> dict[str, Any]:
    """The default config as nested dicts, with dotted keys set (``a[i].b`` sets b in a one-item list)."""
    data = to_dict(Config())
    for key, value in changes.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if part.endswith("[i]"):
                node[part[:-3]] = [{}]
                node = node[part[:-3]][0]
            else:
                node = node[part]
        node[parts[-1]] = value
    return data


def _set(key: str, value: int | float) -> dict[str, Any]:
    """``key`` set to ``value``: a number field, or the first element of a list of numbers."""
    if get_origin(LEAVES[key]) is not list:
        return {key: value}
    default = flatten(Config()).get(key) or [value]
    return {key: [value, *default[1:]]}


def _cases(make: Any) -> list[Any]:
    cases = []
    for key, rule in RANGES.items():
        integer = _number_type(LEAVES[key]) is int
        for value in make(rule, integer):
            cases.append(pytest.param(key, value, id=f"{key}={value}"))
    return cases


def test_every_numeric_field_declares_its_range() -> None:
    numeric = {key for key, tp in LEAVES.items() if _number_type(tp) is not None}
    assert numeric, "no numeric fields found: the schema walk is broken"
    missing = sorted(numeric - set(RANGES))
    assert not missing, f"numeric config fields without a declared range (field(metadata=...)): {missing}"
    assert sorted(set(RANGES) - numeric) == [], "ranges declared on fields that hold no numbers"


def test_the_walk_sees_nested_and_optional_numbers() -> None:
    assert _number_type(LEAVES["bilevel.hessian_batch_size"]) is int
    assert _number_type(LEAVES["augment.blur_p"]) is float
    assert _number_type(LEAVES["data.channels"]) is int
    assert _number_type(LEAVES["data.in_memory"]) is None
    assert _number_type(LEAVES["seed"]) is int
    assert "study.arms[i].name" in LEAVES


@pytest.mark.parametrize(("key", "rule"), list(RANGES.items()), ids=list(RANGES))
def test_every_default_is_inside_its_range(key: str, rule: Range) -> None:
    default = flatten(Config()).get(key)
    if default is not None:
        rule.check(key, default)
    load_config(None)


@pytest.mark.parametrize(("key", "value"), _cases(outside))
def test_a_value_just_outside_the_range_is_refused_naming_the_key(key: str, value: int | float) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(_with(_set(key, value)))
    message = str(error.value)
    assert f"config key '{key.replace('[i]', '[0]')}" in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("key", "value"), _cases(boundaries))
def test_the_values_at_the_bounds_are_accepted(key: str, value: int | float) -> None:
    config_from_dict(_with({**BOUNDARY_CONTEXT.get(key, {}), **_set(key, value)}))


def test_non_finite_floats_say_finite() -> None:
    for override in ("bilevel.lam=.inf", "pretrain.lr=.inf", "finetune.lr=.inf", "pretext.temperature=.nan"):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}' must be finite and > 0"):
            load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("augment.crop_scale=[0.5]", "augment.crop_scale' must be [low, high]"),
        ("augment.crop_ratio=[2.0, 1.0]", "augment.crop_ratio' must be [low, high]"),
        ("augment.blur_p=[0.5, 0.5, 0.5]", "augment.blur_p' must be [view 1, view 2]"),
        ("augment.jitter=[0.4, 0.4]", "augment.jitter' must be [brightness"),
        ("augment.jitter=[0.4, 0.4, 0.2, 0.6]", "augment.jitter[3]' (hue)"),
        ("search.weight_decay_range=[0.1, 0.01]", "search.weight_decay_range' must be [low, high]"),
        ("model.blocks=[]", "model.blocks' must list at least one stage"),
        ("compare.arms=[]", "compare.arms' is empty"),
        ("compare.arms=[bissl, bissl]", "names an arm twice"),
        ("compare.arms=[bissl, other]", "allowed: baseline, bissl"),
    ],
)
def test_list_shapes_are_checked(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert expected in str(error.value)


def test_every_shipped_config_is_inside_the_ranges() -> None:
    for name in shipped_configs():
        load_config(name)


def test_duplicate_keys_in_a_config_file_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "twice.yaml"
    file.write_text("bilevel:\n  lam: 0.1\n  damping: 1.0\n  lam: 0.2\n")
    with pytest.raises(ConfigError, match=r"has key 'bilevel.lam' twice \(line 4\); keep one"):
        load_config(str(file))
    file.write_text("seed: 1\nstudy:\n  arms:\n    - name: a\n      name: b\n")
    with pytest.raises(ConfigError, match=r"key 'study.arms\[0\].name' twice \(line 5\)"):
        load_config(str(file))


def test_merge_keys_and_aliases_are_not_duplicates(tmp_path: Path) -> None:
    file = tmp_path / "merge.yaml"
    file.write_text(
        "bilevel: &b\n  lam: 0.1\n  damping: 2.0\nfinetune: &f {epochs: 3}\n"
        "warmup:\n  <<: {epochs: 4, momentum: 0.5}\n  epochs: 2\n"
    )
    config = load_config(str(file))
    assert (config.bilevel.lam, config.warmup.epochs, config.warmup.momentum) == (0.1, 2, 0.5)


def test_a_config_file_that_is_not_utf8_or_is_a_folder_is_named(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# café\nseed: 1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"config file '.*latin.yaml' is not UTF-8 text"):
        load_config(str(latin))
    folder = tmp_path / "configs.yaml"
    folder.mkdir()
    for given in (str(folder), str(tmp_path)):
        with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
            load_config(given)


def _documented_ranges() -> dict[str, set[str]]:
    """Allowed-values text -> keys, from the table of the section "What is validated" of docs/reliability.md."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    section = text.split("\n## What is validated\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[1]))
    return rows


def test_the_reliability_doc_lists_every_range() -> None:
    expected: dict[str, set[str]] = {}
    for key, rule in RANGES.items():
        expected.setdefault(rule.describe(), set()).add(key)
    assert _documented_ranges() == expected
