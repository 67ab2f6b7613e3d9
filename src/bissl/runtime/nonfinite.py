"""The guard that skips steps with a non-finite loss, gradient or solve, and stops a run after too many in a
row."""

from __future__ import annotations

import torch

from bissl.runtime.console import say


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
