"""The resumable loop every training stage runs: a fixed number of steps, each one a call of the stage's own
step function, with everything around it done here once.

What the loop owns:

- State in and out. The checkpoint file holds ``meta`` (the stage name, and the architecture when given),
  every named part's ``state_dict()``, the non-finite counter (``guard``), every rank's RNG state (``rng``)
  and the number of steps done (``step``). On resume the file is refused unless its stage (and architecture)
  match; the parts, the counter and this rank's RNG state are restored and the loop continues where it
  stopped, so a rerun ends bit-identical to an uninterrupted run.
- The checkpoint cadence: after every ``every``-th step, after a stop request, and once at the end.
- The progress bar, with whatever the step function returns as its postfix.
- The stop: after each step the ranks agree whether any caught SIGTERM / SIGINT; if so the checkpoint is
  written and ``StopRequested`` raised, so every rank leaves at the same step.
- The non-finite guard: ``finite`` skips a step whose loss or gradient norm is NaN / inf with a warning and
  stops the run after ``max_nonfinite`` in a row (``NonFiniteError``, one line; the last checkpoint stays).

In a distributed run rank 0 writes the file and every rank takes part in the collectives (RNG gathering,
barrier, stop agreement) at the same points. docs/reliability.md lists what these guarantees are tested by.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.optim import Optimizer

from bissl import distributed
from bissl.checkpoint import check_architecture, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from bissl.optim import load_optimizer_state
from bissl.runtime import GracefulStop, NonFiniteGuard, progress, say


class Stateful(Protocol):
    """What a part of the saved state offers: modules, optimisers, batch streams, the BiSSL trainer."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> object: ...


@dataclass(frozen=True)
class Part:
    """A part of the saved state given by two functions, for state that is not one object with
    ``state_dict`` / ``load_state_dict`` (a filtered state dict, a list of records, a group of streams)."""

    save: Callable[[], Any]
    load: Callable[[Any], object]

    def state_dict(self) -> Any:
        return self.save()

    def load_state_dict(self, state: Any, /) -> None:
        self.load(state)


def optimizer_part(optimizer: Optimizer, key: str) -> Part:
    """An optimiser as a part of the saved state whose restore refuses, in one line naming the config key
    ``key``, a state saved by another kind of optimiser (``bissl.optim.load_optimizer_state``)."""
    return Part(optimizer.state_dict, lambda state: load_optimizer_state(optimizer, state, key))


StepFunction = Callable[[int], Mapping[str, object] | None]


class StageLoop:
    """``total`` steps of one stage, resumable from ``checkpoint``.

    Construction restores the saved state when ``resume`` is set and the file exists (then ``resumed`` is
    true and ``start`` the number of steps already done); ``run(step)`` calls ``step(index)`` for every
    remaining index and writes the final checkpoint.

    ``name`` labels the progress bar and messages (``unit`` names what one step is); ``stage`` is the
    checkpoint's ``meta.stage``, and ``architecture``, when given, is saved in ``meta`` and must match on
    resume. ``parts`` name what the file holds besides the loop's own entries, in the order they are
    restored. ``every``: a checkpoint after each multiple of that many steps.

    The non-finite guard is the loop's own (``max_nonfinite``, saved as ``guard``) unless ``guard`` hands in
    one that a part already saves (the BiSSL trainer's). Likewise the number of steps done is saved as
    ``step`` unless ``position`` reads it from a part that keeps it (the trainer's alternation count).
    Without a ``checkpoint`` path nothing is read or written, but ranks still meet where a write would be.
    """

    def __init__(
        self,
        name: str,
        total: int,
        *,
        checkpoint: Path | None,
        stage: str,
        parts: Mapping[str, Stateful],
        every: int,
        stop: GracefulStop,
        resume: bool,
        max_nonfinite: int | None = None,
        guard: NonFiniteGuard | None = None,
        architecture: dict[str, Any] | None = None,
        position: Callable[[], int] | None = None,
        unit: str = "step",
    ) -> None:
        if guard is None and max_nonfinite is not None:
            guard, self._saves_guard = NonFiniteGuard(max_nonfinite), True
        elif guard is not None and max_nonfinite is None:
            self._saves_guard = False
        else:
            raise ValueError("give either max_nonfinite (the loop keeps the guard) or guard, not both")
        if every < 1:
            raise ValueError(f"checkpoint cadence must be at least 1 step, got {every}")
        self.name = name
        self.total = total
        self.path = checkpoint
        self.stage = stage
        self.parts = dict(parts)
        self.every = every
        self.stop = stop
        self.architecture = architecture
        self.guard = guard
        self._position = position
        self.position = 0
        self.seconds = 0.0
        self.resumed = False
        if resume and checkpoint is not None and checkpoint.is_file():
            self._restore(checkpoint)
            self.resumed = True
        if position is not None:
            self.position = position()
        self.start = self.position
        if self.resumed and self.start < total:
            say(f"resuming {name} at {unit} {self.start}/{total}")

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, expect_stage=self.stage)
        if self.architecture is not None:
            check_architecture(state, self.architecture, path)
        for key, part in self.parts.items():
            part.load_state_dict(state[key])
        if self._saves_guard:
            self.guard.load_state_dict(state["guard"])
        set_rng_state(distributed.own_entry(state["rng"]))
        if self._position is None:
            self.position = int(state["step"])

    def state(self, rng: Any) -> dict[str, Any]:
        """What the checkpoint file holds at the current position, given every rank's RNG state."""
        meta: dict[str, Any] = {"stage": self.stage}
        if self.architecture is not None:
            meta["architecture"] = self.architecture
        state: dict[str, Any] = {"meta": meta}
        state |= {key: part.state_dict() for key, part in self.parts.items()}
        if self._saves_guard:
            state["guard"] = self.guard.state_dict()
        state["rng"] = rng
        if self._position is None:
            state["step"] = self.position
        return state

    def checkpoint(self) -> None:
        """Write the checkpoint at the current position (rank 0 writes; every rank takes part)."""
        rng = distributed.per_rank(rng_state())
        if self.path is not None and distributed.is_main():
            save_checkpoint(self.path, self.state(rng))
        distributed.barrier()

    def finite(self, value: torch.Tensor | float, what: str, *, across_ranks: bool = False) -> bool:
        """True when ``value`` is finite; else the step is to be skipped (warned and counted) and past
        ``max_nonfinite`` in a row the run stops. ``across_ranks`` for a value each rank computes on its own
        shard (a loss, checked before backward): it then counts as non-finite everywhere when it is on any
        rank, so all ranks skip together."""
        checked = distributed.agree_finite(value) if across_ranks else value
        return self.guard.ok(checked, what, self.position)

    @property
    def skipped(self) -> int:
        """Steps skipped for non-finite values so far (resumed runs included)."""
        return self.guard.skipped

    def run(self, step: StepFunction, *, before_last_checkpoint: Callable[[], None] | None = None) -> None:
        """Call ``step(index)`` for each remaining index, then write the final checkpoint.

        After each step: the bar moves (showing what ``step`` returned), and when a stop was requested on
        any rank or ``every`` steps are done the checkpoint is written; a stop then raises StopRequested.
        ``before_last_checkpoint`` runs once the steps are done, before the final checkpoint."""
        bar = progress(self.total, self.name, initial=self.start)
        started = time.perf_counter()
        try:
            while self.position < self.total:
                shown = step(self.position)
                self.position += 1
                bar.update(1)
                if shown:
                    bar.set_postfix(shown)
                if distributed.agree_stop(self.stop) or self.position % self.every == 0:
                    self.checkpoint()
                    self.stop.check()
        finally:
            bar.close()
            self.seconds += time.perf_counter() - started
        if before_last_checkpoint is not None:
            before_last_checkpoint()
        self.checkpoint()
