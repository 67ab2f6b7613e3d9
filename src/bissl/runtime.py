"""What every run shares: its output folder, logging, seeding, device choice, progress and clean stops."""

from __future__ import annotations

import atexit
import errno
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from bissl import distributed
from bissl.config import Config, dump_yaml, to_dict
from bissl.errors import BisslError, ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks this rank's GPU when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {name!r} but no CUDA device is available; use device=cpu")
    if name == "cuda":
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


def quiet() -> bool:
    """Progress bars are off when not a terminal, with --quiet (BISSL_QUIET=1), and on ranks other than 0."""
    return os.environ.get("BISSL_QUIET") == "1" or not sys.stderr.isatty() or not distributed.is_main()


def progress(total: int, description: str, initial: int = 0) -> tqdm:
    """A progress bar with rate and ETA (silent when ``quiet()``)."""
    return tqdm(
        total=total, initial=initial, desc=description, disable=quiet(), dynamic_ncols=True, leave=False
    )


def say(message: str) -> None:
    """One line to stderr from rank 0 unless quiet."""
    if distributed.is_main() and os.environ.get("BISSL_QUIET") != "1":
        print(message, file=sys.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


TENSORBOARD_MISSING = (
    "logging.tensorboard=true needs the tensorboard package: pip install 'bissl[tensorboard]' "
    "(or set logging.tensorboard=false)"
)
# Keys of a metrics record that give its TensorBoard step, in order of preference.
STEP_KEYS = ("step", "alternation", "trial", "epoch")
# Event writers held open at once (each holds a file and a thread); the least recently used closes first.
MAX_OPEN_WRITERS = 8


def scalar_metrics(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics record by (slash-joined, for nested dicts) name; strings, booleans, lists and
    nulls are left out."""
    scalars: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            scalars.update(scalar_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            scalars[prefix + key] = float(value)
    return scalars


class TensorBoardLog:
    """TensorBoard event files in one folder: every number of a metrics record as the scalar
    ``<stage>/<name>``, at the record's step (``step``, ``alternation``, ``trial`` or ``epoch``; else a count
    of that stage's records)."""

    def __init__(self, folder: Path) -> None:
        self.writer = tensorboard_writer_class()(log_dir=str(folder))
        self.counts: dict[str, int] = {}

    def write(self, record: dict[str, Any]) -> None:
        record = _jsonable(record)
        stage = str(record.get("stage", "run"))
        step_key = next((k for k in STEP_KEYS if isinstance(record.get(k), int)), None)
        if step_key is not None:
            step = int(record[step_key])
        else:
            step = self.counts.get(stage, 0)
            self.counts[stage] = step + 1
        for name, value in scalar_metrics(record).items():
            if name != step_key:
                self.writer.add_scalar(f"{stage}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_writer_class() -> Any:
    """torch's SummaryWriter; a missing tensorboard package raises ConfigError saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(TENSORBOARD_MISSING) from None
    return SummaryWriter


_TENSORBOARD_LOGS: OrderedDict[Path, TensorBoardLog] = OrderedDict()


def tensorboard_log(folder: Path) -> TensorBoardLog:
    """The open event writer of ``folder`` (opened on first use; at most MAX_OPEN_WRITERS stay open)."""
    key = folder.resolve()
    if key in _TENSORBOARD_LOGS:
        _TENSORBOARD_LOGS.move_to_end(key)
        return _TENSORBOARD_LOGS[key]
    while len(_TENSORBOARD_LOGS) >= MAX_OPEN_WRITERS:
        _TENSORBOARD_LOGS.popitem(last=False)[1].close()
    log = _TENSORBOARD_LOGS[key] = TensorBoardLog(folder)
    return log


def close_tensorboard_logs() -> None:
    """Close every open event writer (also run at exit)."""
    while _TENSORBOARD_LOGS:
        _TENSORBOARD_LOGS.popitem()[1].close()


atexit.register(close_tensorboard_logs)


CONFIG_FILE = "config.yaml"
SPLITS_FOLDER = "splits"
# Config keys that shape the saved weights: a checkpoint cannot be resumed under other values.
WEIGHT_SHAPING_KEYS = (
    "model.backbone",
    "model.stem",
    "model.width",
    "model.blocks",
    "pretext.method",
    "pretext.projector_hidden",
    "pretext.projector_dim",
    "pretext.predictor_hidden",
    "pretext.head_hidden_bias",
    "pretext.head_output_bias",
    "data.pretext",
    "data.downstream",
    "data.channels",
)
# Config keys that hold a file path; in a summary.json they are stored relative to the folder holding it.
PATH_KEYS = ("pretext_checkpoint", "backbone", "head_checkpoint", "pretrain.init_checkpoint")
RELATIVE_PATHS = "relative_paths"
"""summary.json key: true when its path values are relative to the folder holding the file."""


SETUP_NAMES = (CONFIG_FILE, CONFIG_FILE + ".tmp", ".write-test")


def is_setup_file(relative: Path) -> bool:
    """Whether a file of a run folder (path relative to it) is set-up only: a ``config.yaml`` (or what writing
    it leaves when killed) or a data split under ``splits/``, at any depth. Everything else (checkpoints,
    metrics, summaries, results) is work."""
    return relative.name in SETUP_NAMES or SPLITS_FOLDER in relative.parts[:-1]


def files_under(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``folder`` (relative path -> modification time in ns and size); empty when absent."""
    state: dict[Path, tuple[int, int]] = {}
    if not folder.is_dir():
        return state
    for path in folder.rglob("*"):
        try:
            info = path.stat()
        except OSError:
            continue
        if path.is_file():
            state[path.relative_to(folder)] = (info.st_mtime_ns, info.st_size)
    return state


def work_files(state: dict[Path, tuple[int, int]]) -> dict[Path, tuple[int, int]]:
    """The entries of a ``files_under`` state that are work, not set-up (see ``is_setup_file``)."""
    return {path: stamp for path, stamp in state.items() if not is_setup_file(path)}


def holds_work(folder: Path) -> bool:
    """Whether a run folder holds anything a run produced (a checkpoint, metrics, a summary): a folder with
    only its config.yaml and data splits is a run that never started, and its config binds nothing."""
    return bool(work_files(files_under(folder)))


def _lookup(data: Any, dotted: str, missing: Any = None) -> Any:
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
    relative to ``base``, so that moving ``anchor`` as a whole keeps them valid."""
    data = json.loads(json.dumps(config))
    for key in PATH_KEYS:
        value = _lookup(data, key)
        if isinstance(value, str) and value:
            _assign(data, key, _relative(value, base, anchor))
    return data


def _relative(value: str, base: Path, anchor: Path) -> str:
    """``value`` relative to ``base`` when it lies inside ``anchor``, else unchanged."""
    target = Path(value).resolve()
    if not _inside(target, anchor.resolve()):
        return value
    return os.path.relpath(target, base.resolve())


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


class RunDir:
    """A run's output folder: config.yaml, metrics.jsonl, checkpoints/, summary.json, and TensorBoard event
    files of the metrics when ``logging.tensorboard`` is on.

    Only rank 0 writes. An existing folder made with a different config is refused unless ``resume`` or
    ``force`` is given, so a typo never overwrites finished work; a folder that holds only its config.yaml and
    data splits (a run that failed or stopped before doing any work) binds nothing and is taken over, its
    stale splits dropped. Resuming checkpoints made with other weight-shaping keys (model, pretext head, data)
    is refused before anything is written. With ``anchor`` (the outermost folder of a compare or study),
    summary.json stores the paths of the config that lie inside ``anchor`` relative to this folder.
    """

    def __init__(
        self,
        path: str | Path,
        config: Config,
        *,
        resume: bool = False,
        force: bool = False,
        anchor: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.checkpoints = self.path / "checkpoints"
        self.anchor = anchor
        if not distributed.is_main():
            return
        if config.logging.tensorboard:
            tensorboard_writer_class()
        config_file = self.path / CONFIG_FILE
        text = dump_yaml(config)
        previous = _read_text(config_file)
        if previous is not None and previous != text:
            if not holds_work(self.path):
                self._drop_stale_splits(previous, config)
            elif not (resume or force):
                raise BisslError(
                    f"output folder '{self.path}' holds a run with a different config; "
                    "pass --resume to continue it, --force to reuse it, or choose another --out"
                )
            else:
                self._check_resumable(previous, config)
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise BisslError(
                f"output folder '{_short(str(self.path))}' is not writable ({exc.strerror}); choose another --out"
            ) from None
        self._write_text(config_file, text)

    def _drop_stale_splits(self, previous: str, config: Config) -> None:
        """A run that never started leaves data splits drawn for its own data section; drop them when the data
        section changed, so the new run draws its own."""
        try:
            stored = yaml.safe_load(previous)
        except yaml.YAMLError:
            stored = None
        if _lookup(stored, "data") != to_dict(config)["data"]:
            shutil.rmtree(self.path / SPLITS_FOLDER, ignore_errors=True)

    def _check_resumable(self, previous: str, config: Config) -> None:
        """Refuse to continue checkpoints whose weights were shaped by other config values, naming the key."""
        if not self.checkpoints.is_dir() or not any(self.checkpoints.glob("*.pt")):
            return
        try:
            stored = yaml.safe_load(previous)
        except yaml.YAMLError:
            return
        if not isinstance(stored, dict):
            return
        current, default = to_dict(config), to_dict(Config())
        for key in WEIGHT_SHAPING_KEYS:
            old, new = _lookup(stored, key, _lookup(default, key)), _lookup(current, key)
            if old != new:
                raise BisslError(
                    f"output folder '{self.path}' holds checkpoints made with {key}={_plain(old)} "
                    f"(its config.yaml) but this command sets {key}={_plain(new)}; they cannot be continued: "
                    f"use {key}={_plain(old)}, or choose another --out"
                )

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def _write_text(self, target: Path, text: str) -> None:
        """Write a file of the run folder atomically; a full disk or a write error ends in one line."""
        temporary = target.with_name(target.name + ".tmp")
        try:
            temporary.write_text(text)
            os.replace(temporary, target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise write_error(target, exc) from None

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl (and its numbers to the event files, when asked)."""
        if distributed.is_main():
            target = self.path / "metrics.jsonl"
            try:
                with open(target, "a") as stream:
                    stream.write(json.dumps(_jsonable(record)) + "\n")
            except OSError as exc:
                raise write_error(target, exc) from None
            if self.config.logging.tensorboard:
                tensorboard_log(self.path).write(record)

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        """Write a JSON file into the run folder (atomically)."""
        target = self.path / name
        if distributed.is_main():
            self._write_text(target, json.dumps(_jsonable(data), indent=2))
        return target

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """summary.json: the run's final numbers, written once at the end (with ``anchor``, its config's paths
        inside the anchor are relative to this folder)."""
        config = to_dict(self.config)
        if self.anchor is None:
            return self.write_json("summary.json", {"config": config, **summary})
        config = relative_paths(config, self.path, self.anchor)
        summary = {
            key: _relative(value, self.path, self.anchor)
            if key in PATH_KEYS and isinstance(value, str)
            else value
            for key, value in summary.items()
        }
        return self.write_json("summary.json", {"config": config, RELATIVE_PATHS: True, **summary})


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)


def write_error(target: Path, exc: OSError) -> BisslError:
    """The one-line error for a failed write of ``target``: a full disk says to free space."""
    if exc.errno in SPACE_ERRORS:
        return BisslError(
            f"no space left to write '{target}'; free space on that disk, then rerun the same command"
        )
    return BisslError(f"cannot write '{target}' ({exc.strerror or exc}); check the folder and rerun")


class StopRequested(Exception):
    """Raised after a checkpoint was written in answer to SIGTERM / SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.exit_code = 128 + signum


class GracefulStop:
    """Turns SIGTERM/SIGINT into a flag; loops check it after each step, checkpoint and stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> GracefulStop:
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def check(self) -> None:
        """Raise StopRequested if a signal arrived (call right after writing a checkpoint)."""
        if self.signum is not None:
            raise StopRequested(self.signum)


class Timer:
    """Accumulates wall seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        values, self.seconds = self.seconds, {}
        return values


class NonFiniteGuard:
    """Skips steps whose loss, gradient or solve is non-finite; stops after ``limit`` consecutive ones."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0
        self.skipped = 0

    def ok(self, value: torch.Tensor | float, what: str, step: int) -> bool:
        """True when ``value`` is finite; otherwise count, warn, and raise NonFiniteError past the limit."""
        finite = bool(torch.isfinite(torch.as_tensor(value)).all())
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        say(f"warning: non-finite {what} at step {step}; step skipped ({self.consecutive}/{self.limit})")
        if self.consecutive >= self.limit:
            from bissl.errors import NonFiniteError

            raise NonFiniteError(
                f"{self.consecutive} consecutive non-finite {what} values at step {step}: lower the learning "
                "rate or raise max_nonfinite"
            )
        return False

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive = int(state["consecutive"])
        self.skipped = int(state["skipped"])
