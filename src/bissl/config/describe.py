"""Configs in words: the fields' attribute docstrings, dotted keys with their values, and the text of
``bissl config show``."""

from __future__ import annotations

import ast
import dataclasses
from functools import cache
from pathlib import Path
from typing import Any

from bissl.config import bounds, schema
from bissl.config.convert import to_dict
from bissl.config.schema import Config, field_types
from bissl.errors import ConfigError

DOCUMENTED_MODULES = (bounds, schema)
"""The modules whose dataclass fields carry attribute docstrings (read from their source)."""


@cache
def attribute_docstrings() -> dict[str, dict[str, str]]:
    """Class name -> field name -> the string literal on the line below that field, read with ``ast`` from the
    source of the modules that define the dataclasses (``DOCUMENTED_MODULES``: the source ships with the
    package, so this works from a wheel too)."""
    found: dict[str, dict[str, str]] = {}
    for module in DOCUMENTED_MODULES:
        found.update(_class_attribute_docstrings(Path(module.__file__ or "")))
    return found


def _class_attribute_docstrings(source: Path) -> dict[str, dict[str, str]]:
    """Class name -> field name -> attribute docstring, for the classes at the top level of ``source``."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        for statement, following in zip(node.body, node.body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
        found[node.name] = docs
    return found


def _walk_fields(cls: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, type, description) of every leaf field of the dataclass ``cls``, in declaration order."""
    hints = field_types(cls)
    docs = attribute_docstrings().get(cls.__name__, {})
    rows: list[tuple[str, Any, str]] = []
    for item in dataclasses.fields(cls):
        tp = hints[item.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(_walk_fields(tp, prefix + item.name + "."))
        else:
            rows.append((prefix + item.name, tp, docs.get(item.name, "")))
    return rows


def field_descriptions() -> dict[str, str]:
    """Dotted key -> one-line description, for every leaf key of :class:`Config` (empty when undocumented)."""
    return {key: doc for key, _, doc in _walk_fields(Config)}


def section_descriptions() -> dict[str, str]:
    """Section name (``bilevel``) -> the description of its field in :class:`Config`."""
    docs = attribute_docstrings()["Config"]
    hints = field_types(Config)
    return {name: docs.get(name, "") for name, tp in hints.items() if dataclasses.is_dataclass(tp)}


def flatten(config: Config) -> dict[str, Any]:
    """Dotted key -> value, for every leaf key of the config."""
    flat: dict[str, Any] = {}

    def visit(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                visit(value, prefix + key + ".")
            else:
                flat[prefix + key] = value

    visit(to_dict(config), "")
    return flat


def format_value(value: Any) -> str:
    """A value as it is written in an override (``null``, ``true``, ``[1, 2]``, ``0.001``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def describe_config(config: Config, sections: list[str] | None = None) -> str:
    """Every resolved key with its value and description, grouped by section under a ``# section`` line.

    ``sections`` keeps only keys that equal or lie under one of the given names (``bilevel``, ``data.channels``);
    an unknown name raises ConfigError listing the sections."""
    values = flatten(config)
    descriptions = field_descriptions()
    keys = list(values)
    if sections:
        for wanted in sections:
            if not any(key == wanted or key.startswith(wanted + ".") for key in keys):
                names = ", ".join(section_descriptions())
                raise ConfigError(f"config has no key or section '{wanted}'; sections: {names}")
        keys = [k for k in keys if any(k == w or k.startswith(w + ".") for w in sections)]
    shown = {key: format_value(values[key]) for key in keys}
    key_width = max((len(k) for k in keys), default=0)
    value_width = min(max((len(v) for v in shown.values()), default=0), 24)
    section_docs = section_descriptions()
    lines: list[str] = []
    current: str | None = None
    for key in keys:
        section = key.split(".", 1)[0] if "." in key else ""
        if section != current:
            current = section
            title = f"# {section}: {section_docs.get(section, '')}" if section else "# top level"
            lines.extend([""] if lines else [])
            lines.append(title)
        lines.append(f"{key:<{key_width}}  {shown[key]:<{value_width}}  {descriptions.get(key, '')}".rstrip())
    return "\n".join(lines)
