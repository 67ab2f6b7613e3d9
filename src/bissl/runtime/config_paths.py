"""Paths inside a stored config: the keys that hold a file path, and writing those that lie inside a folder
relative to another, so that moving the folder as a whole keeps them valid."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Config keys that hold a file path; in a summary.json they are stored relative to the folder holding it.
PATH_KEYS = ("pretext_checkpoint", "backbone", "head_checkpoint", "pretrain.init_checkpoint")
RELATIVE_PATHS = "relative_paths"
"""summary.json key: true when its path values are relative to the folder holding the file."""


def lookup(data: Any, dotted: str, missing: Any = None) -> Any:
    """The value at the dotted key of nested dicts, ``missing`` when a part is absent."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return missing
        data = data[part]
    return data


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, last = dotted.split(".")
    for part in sections:
        data = data[part]
    data[last] = value


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def relative_paths(config: dict[str, Any], base: Path, anchor: Path) -> dict[str, Any]:
    """A copy of a config dict whose path values (``PATH_KEYS``) that lie inside ``anchor`` are written
    relative to ``base``, so that moving ``anchor`` as a whole keeps them valid; the others are absolute."""
    data = json.loads(json.dumps(config))
    for key in PATH_KEYS:
        value = lookup(data, key)
        if isinstance(value, str) and value:
            _assign(data, key, relative_path(value, base, anchor))
    return data


def relative_path(value: str, base: Path, anchor: Path) -> str:
    """``value`` relative to ``base`` when it lies inside ``anchor``, else absolute (a path given relative to
    the working directory would otherwise be read later as relative to ``base``)."""
    target = Path(value).resolve()
    if not _inside(target, anchor.resolve()):
        return str(target)
    return os.path.relpath(target, base.resolve())
