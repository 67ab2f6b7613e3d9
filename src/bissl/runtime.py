"""What every run shares: its output folder, logging, seeding, device choice, progress and clean stops."""

from __future__ import annotations

import atexit
import json
import math
import os
import random
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


class RunDir:
    """A run's output folder: config.yaml, metrics.jsonl, checkpoints/, summary.json, and TensorBoard event
    files of the metrics when ``logging.tensorboard`` is on.

    Only rank 0 writes. An existing folder made with a different config is refused unless ``resume`` or
    ``force`` is given, so a typo never overwrites finished work.
    """

    def __init__(
        self, path: str | Path, config: Config, *, resume: bool = False, force: bool = False
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.checkpoints = self.path / "checkpoints"
        if not distributed.is_main():
            return
        if config.logging.tensorboard:
            tensorboard_writer_class()
        config_file = self.path / "config.yaml"
        if config_file.exists() and not (resume or force) and config_file.read_text() != dump_yaml(config):
            raise BisslError(
                f"output folder '{self.path}' holds a run with a different config; "
                "pass --resume to continue it, --force to reuse it, or choose another --out"
            )
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise BisslError(
                f"output folder '{self.path}' is not writable ({exc.strerror}); choose another --out"
            ) from None
        config_file.write_text(dump_yaml(config))

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl (and its numbers to the event files, when asked)."""
        if distributed.is_main():
            with open(self.path / "metrics.jsonl", "a") as stream:
                stream.write(json.dumps(_jsonable(record)) + "\n")
            if self.config.logging.tensorboard:
                tensorboard_log(self.path).write(record)

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        """Write a JSON file into the run folder (atomically)."""
        target = self.path / name
        if distributed.is_main():
            temporary = target.with_suffix(target.suffix + ".tmp")
            temporary.write_text(json.dumps(_jsonable(data), indent=2))
            os.replace(temporary, target)
        return target

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """summary.json: the run's final numbers, written once at the end."""
        return self.write_json("summary.json", {"config": to_dict(self.config), **summary})


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
                f"{self.consecutive} consecutive non-finite {what} values at step {step}; the last good "
                "checkpoint is kept: lower the learning rate or raise max_nonfinite"
            )
        return False

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive = int(state["consecutive"])
        self.skipped = int(state["skipped"])
