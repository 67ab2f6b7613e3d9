"""TensorBoard event files of a run's metrics (``logging.tensorboard``): one writer per folder, a bounded
number held open, all closed at exit."""

from __future__ import annotations

import atexit
from collections import OrderedDict
from pathlib import Path
from typing import Any

from bissl.errors import ConfigError
from bissl.runtime.records import jsonable, scalar_metrics

TENSORBOARD_MISSING = (
    "logging.tensorboard=true needs the tensorboard package: pip install 'bissl[tensorboard]' "
    "(or set logging.tensorboard=false)"
)
# Keys of a metrics record that give its TensorBoard step, in order of preference.
STEP_KEYS = ("step", "alternation", "trial", "epoch")
# Event writers held open at once (each holds a file and a thread); the least recently used closes first.
MAX_OPEN_WRITERS = 8


class TensorBoardLog:
    """TensorBoard event files in one folder: every number of a metrics record as the scalar
    ``<stage>/<name>``, at the record's step (``step``, ``alternation``, ``trial`` or ``epoch``; else a count
    of that stage's records)."""

    def __init__(self, folder: Path) -> None:
        self.writer = tensorboard_writer_class()(log_dir=str(folder))
        self.counts: dict[str, int] = {}

    def write(self, record: dict[str, Any]) -> None:
        record = jsonable(record)
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
