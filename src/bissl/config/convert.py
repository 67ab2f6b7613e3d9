"""Plain data to and from the dataclasses: nested dicts checked against the type annotations (one-line
ConfigError naming the key), and a config back to dicts and YAML text."""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from bissl.config.schema import Config, field_types
from bissl.config.validation import validate
from bissl.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"config key '{key}' got {value!r}; allowed values: {', '.join(map(str, allowed))}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' got {value!r}; expected {_type_name(tp)}")
    if origin is list:
        (item_type,) = get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' got {value!r}; expected {_type_name(tp)}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, prefix=key + ".")
    raise ConfigError(f"config key '{key}' got {value!r}; expected {_type_name(tp)}")


RENAMED_KEYS: dict[str, str] = {"bilevel.cg_iterations": "bilevel.solver_iterations"}
"""Old dotted key -> its current name; the old name is still read, with a note on stderr."""


def renamed(data: dict[str, Any], prefix: str = "", *, note: bool = False) -> dict[str, Any]:
    """``data`` (a section at ``prefix``) with old key names replaced by their current ones. Giving both the
    old and the new name is an error; ``note`` prints one line per old name met."""
    result = dict(data)
    for old, new in RENAMED_KEYS.items():
        section, _, old_key = old.rpartition(".")
        if prefix.rstrip(".") != section or old_key not in result:
            continue
        new_key = new.rpartition(".")[2]
        if new_key in result:
            raise ConfigError(f"config keys '{old}' and '{new}' are the same setting; give only '{new}'")
        result[new_key] = result.pop(old_key)
        if note:
            print(
                f"bissl: note: config key '{old}' is now '{new}'; the old name still works", file=sys.stderr
            )
    return result


def with_current_names(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A whole config dict (a stored one, say) with every old key name replaced by its current one."""
    return {
        key: with_current_names(value, f"{prefix}{key}.") if isinstance(value, dict) else value
        for key, value in renamed(data, prefix).items()
    }


def from_dict(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in renamed(data, prefix, note=True).items():
        if key not in hints:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; allowed keys in {where}: {', '.join(sorted(hints))}"
            )
        kwargs[key] = _coerce(prefix + key, value, hints[key])
    return cls(**kwargs)


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts (for YAML and JSON)."""
    return dataclasses.asdict(config)


def dump_yaml(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (used when a checkpoint carries its config)."""
    config: Config = from_dict(Config, data)
    validate(config)
    return config
