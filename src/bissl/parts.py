"""The parts runner that ``bissl compare`` and ``bissl study`` share: each part of a run (pretraining, warm-up,
BiSSL stage, search and seeds, probes) runs once in its own folder, is timed, and is skipped on a rerun when
its summary exists for the same values of the config keys its stage reads.

Also here: reading a part's summary.json and the run's timings.json, the config comparison that decides
whether a finished part is still valid (paths compared as places in the run folder), and paths relative to
the run folder as results.json stores them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from bissl import distributed
from bissl.config import Config, to_dict, with_current_names
from bissl.errors import BisslError, ConfigError
from bissl.runtime import PATH_KEYS, RELATIVE_PATHS, GracefulStop, RunDir, StopRequested, say

TIMINGS_FILE = "timings.json"
COMMON_KEYS = ("seed", "device", "precision", "channels_last", "max_nonfinite")
PART_READS: dict[str, tuple[str, ...]] = {
    "pretrain": (*COMMON_KEYS, "data", "model", "pretext", "augment", "pretrain", "logging"),
    "warmup": (
        *COMMON_KEYS,
        "pretext_checkpoint",
        "data",
        "model",
        "pretext",
        "augment",
        "warmup",
        "logging",
        "bilevel.upper_optimizer",
        "bilevel.upper_lr",
        "bilevel.upper_weight_decay",
    ),
    "train_bilevel": (
        *COMMON_KEYS,
        "hvp_precision",
        "pretext_checkpoint",
        "head_checkpoint",
        "data",
        "model",
        "pretext",
        "augment",
        "pretrain",
        "warmup",
        "bilevel",
        "logging",
    ),
    "search": (
        *COMMON_KEYS,
        "backbone",
        "data",
        "model",
        "pretext.method",
        "augment",
        "finetune",
        "search",
        "logging",
    ),
    "evaluate": (*COMMON_KEYS, "backbone", "data", "model", "pretext.method", "augment", "eval", "logging"),
}
PART_READS["seeds_at_setting"] = PART_READS["search"]
"""The config sections and keys each part's stage reads (by the stage function's name): a part is done when its
summary was written under the same values of these; a change elsewhere leaves it valid. A stage not listed
compares every key."""


def read_summary(path: Path) -> dict[str, Any] | None:
    """A part's summary.json, or None when the part has not finished; an unreadable or truncated file counts
    as not finished (the part runs again and rewrites it)."""
    file = path / "summary.json"
    if not file.is_file():
        return None
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        summary = None
    if not isinstance(summary, dict):
        if file not in _UNREADABLE:
            _UNREADABLE.add(file)
            say(f"{file} is unreadable; its part runs again")
        return None
    return dict(summary)


_UNREADABLE: set[Path] = set()


def read_timings(file: Path) -> dict[str, float]:
    """timings.json (part name -> seconds); an unreadable file counts as empty."""
    try:
        timings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(timings, dict):
        return {}
    return {str(k): float(v) for k, v in timings.items() if isinstance(v, int | float)}


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data))


def config_difference(stored: Any, current: Any, default: Any, prefix: str = "") -> str | None:
    """The first dotted key where a part's stored config differs from ``current`` (None: the same). A key that
    ``stored`` lacks counts as equal when ``current`` holds its default there: keys added to the config since
    the part ran leave the behaviour of their defaults unchanged, so finished parts stay valid across such
    additions."""
    if isinstance(stored, dict) and isinstance(current, dict):
        defaults = default if isinstance(default, dict) else {}
        for key, value in current.items():
            if key in stored:
                found = config_difference(stored[key], value, defaults.get(key), f"{prefix}{key}.")
                if found is not None:
                    return found
            elif value != defaults.get(key, _MISSING):
                return prefix + key
        for key in stored:
            if key not in current:
                return prefix + key
        return None
    return None if stored == current else prefix.rstrip(".")


def same_config(stored: Any, current: Any, default: Any) -> bool:
    """Whether a part's stored config is ``current`` (see ``config_difference``)."""
    return config_difference(stored, current, default) is None


_MISSING = object()


def _select(data: Any, reads: tuple[str, ...] | None) -> Any:
    """The sections and dotted keys of a config dict that ``reads`` names (all of it for None)."""
    if reads is None or not isinstance(data, dict):
        return data
    selected: dict[str, Any] = {}
    for key in reads:
        head, _, rest = key.partition(".")
        if head not in data:
            continue
        if not rest:
            selected[head] = data[head]
        elif isinstance(data[head], dict) and rest in data[head]:
            selected.setdefault(head, {})[rest] = data[head][rest]
    return selected


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _replace_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, last = dotted.split(".")
    for part in sections:
        data = data[part]
    data[last] = value


RUN_FOLDER = "<run folder>"


def _location(value: str, base: Path, root: Path) -> str:
    """A path of a config as its place in the run folder (``<run folder>/...``) when it lies inside ``root``,
    else as an absolute path; ``base`` is the folder a relative path is relative to. Older summaries kept a
    path outside the run folder as given, relative to the working directory: a relative value that names no
    file from ``base`` but one from the working directory is read from there."""
    target = Path(value).resolve()
    if not Path(value).is_absolute():
        target = (base / value).resolve()
        if not target.exists() and Path(value).exists():
            target = Path(value).resolve()
    try:
        return f"{RUN_FOLDER}/{target.relative_to(root).as_posix()}"
    except ValueError:
        return str(target)


def _located(data: Any, base: Path, root: Path, current: Any = None) -> Any:
    """A copy of a config dict with its path values as ``_location`` gives them. With ``current`` (the located
    config of this run), a stored absolute path outside ``root`` that ends with the place ``current`` names
    inside the run folder is that place: a run folder moved after an older run stored absolute paths."""
    if not isinstance(data, dict):
        return data
    data = _plain(data)
    for key in PATH_KEYS:
        value = _lookup(data, key)
        if not isinstance(value, str) or not value:
            continue
        located = _location(value, base, root)
        wanted = _lookup(current, key) if current is not None else None
        if (
            isinstance(wanted, str)
            and wanted.startswith(RUN_FOLDER + "/")
            and not located.startswith(RUN_FOLDER + "/")
        ):
            inside = Path(wanted[len(RUN_FOLDER) + 1 :]).parts
            if Path(located).parts[-len(inside) :] == inside:
                located = wanted
        _replace_key(data, key, located)
    return data


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:79] + "…"


@cache
def _defaults() -> dict[str, Any]:
    """Every key at its default, as plain JSON values (what a key missing from a stored config means)."""
    return dict(_plain(to_dict(Config())))


class Parts:
    """Runs each named part of a ``compare`` or ``study`` once in its folder, records its wall time (a stopped
    part's too), and skips it when its summary exists for the same values of the keys its stage reads (a
    summary written under other values is refused, naming the key: the results would mix settings). Paths in
    part summaries are relative to the part's folder, so a moved run folder keeps its finished parts.

    ``dry``: only check the finished parts (``run`` returns their summaries, or {} for a part still to run)
    and write nothing, so that a refused command leaves the folder as it was; ``rows`` then lists every
    part met, in order, with whether it has finished (what ``bissl study --plan`` prints)."""

    def __init__(self, root: Path, stop: GracefulStop, label: str, *, dry: bool = False) -> None:
        self.root = root
        self.stop = stop
        self.label = label
        self.dry = dry
        self.rows: list[tuple[str, bool]] = []
        self.timings_file = root / TIMINGS_FILE
        self.timings: dict[str, float] = read_timings(self.timings_file)

    def run(self, name: str, folder: Path, config: Config, stage: Callable[..., Any]) -> dict[str, Any]:
        reads = PART_READS.get(getattr(stage, "__name__", ""))
        done = self.done(name, folder, config, reads)
        if self.dry:
            self.rows.append((name, done is not None))
            return done or {}
        if done is not None:
            say(f"{self.label}: {name} already done, skipped")
            return done
        say(f"{self.label}: {name}")
        started = time.perf_counter()
        run = RunDir(folder, config, resume=True, force=True, anchor=self.root)
        try:
            stage(config, run, stop=self.stop, resume=True)
        except StopRequested:
            self.record(name, time.perf_counter() - started)  # checkpointed work, resumed by the next run
            raise
        self.record(name, time.perf_counter() - started)
        return read_summary(folder) or {}

    def done(
        self, name: str, folder: Path, config: Config, reads: tuple[str, ...] | None = None
    ) -> dict[str, Any] | None:
        """The part's summary when it has finished under ``config`` (compared on ``reads``, every key when
        None); None when it still has to run."""
        summary = read_summary(folder)
        if summary is None or not isinstance(summary.get("config"), dict):
            return None
        root = self.root.resolve()
        current = _located(_plain(to_dict(config)), Path.cwd(), root)
        base = folder.resolve() if summary.get(RELATIVE_PATHS) else Path.cwd()
        stored = _located(with_current_names(summary["config"]), base, root, current)  # renamed keys too
        key = config_difference(_select(stored, reads), _select(current, reads), _select(_defaults(), reads))
        if key is not None:
            there, here = _lookup(stored, key), _lookup(current, key)
            raise ConfigError(
                f"{self.label} part '{name}' in {folder} was run with another config ({key}: {_shown(there)} "
                f"there, {_shown(here)} now); restore it, or remove that folder (or use another --out) to run "
                "it again"
            )
        return summary

    def pending(self, name: str, folder: Path) -> None:
        """A part that cannot be set up yet because a part it reads from has not finished (in ``dry`` mode:
        nothing to check, a part still to run)."""
        if self.dry:
            self.rows.append((name, False))
            return
        raise BisslError(
            f"{self.label} part '{name}' in {folder} needs the result of a part that has not finished; "
            "rerun the same command"
        )

    def record(self, name: str, seconds: float) -> None:
        if self.dry:
            return
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        if not distributed.is_main():
            return
        temporary = self.timings_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.timings, indent=2))
        temporary.replace(self.timings_file)


def relative_to_run(path: str | Path, root: Path) -> str:
    """``path`` relative to the run folder ``root`` when it lies inside it (as results.json stores it), else
    as given."""
    target = Path(path).resolve()
    try:
        return target.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
