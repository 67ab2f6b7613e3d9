"""Clean stops: SIGTERM and SIGINT become a flag that the loops check after each step, then checkpoint and
stop with :class:`StopRequested`."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any


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
