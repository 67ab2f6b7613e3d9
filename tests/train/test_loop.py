"""The resumable stage loop on a toy stage: checkpoint cadence, stop requests, the non-finite guard, and
resume restoring the parts, the RNG state and the position."""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from bissl.checkpoint import load_checkpoint
from bissl.errors import CheckpointError, NonFiniteError
from bissl.runtime import GracefulStop, NonFiniteGuard, StopRequested, seed_everything
from bissl.train.loop import Part, StageLoop

STAGE = "toy-state"


@dataclass
class Toy:
    """A linear model trained on random batches; each step also draws from Python's and NumPy's RNGs."""

    path: Path
    total: int = 6
    every: int = 100
    max_nonfinite: int = 3
    resume: bool = True
    stop: GracefulStop = field(default_factory=GracefulStop)
    nan_at: set[int] = field(default_factory=set)
    stop_after: int | None = None
    architecture: dict[str, Any] | None = None
    stage: str = STAGE
    steps: list[int] = field(default_factory=list)
    saved_at: list[int] = field(default_factory=list)
    draws: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        seed_everything(0)  # a resumed run that did not restore the RNG state would redraw step 0's numbers
        self.model = nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.loop = StageLoop(
            "toy",
            self.total,
            checkpoint=self.path,
            stage=self.stage,
            architecture=self.architecture,
            parts={
                "model": self.model,
                "optimizer": self.optimizer,
                "draws": Part(self._save_draws, self.draws.extend),
            },
            max_nonfinite=self.max_nonfinite,
            every=self.every,
            stop=self.stop,
            resume=self.resume,
        )

    def _save_draws(self) -> list[list[float]]:
        self.saved_at.append(self.loop.position)
        return list(self.draws)

    def step(self, index: int) -> dict[str, str]:
        self.steps.append(index)
        inputs = torch.randn(4, 3)
        self.draws.append([float(inputs.sum()), random.random(), float(np.random.rand())])
        loss = self.model(inputs).pow(2).mean()
        if index in self.nan_at:
            loss = loss * float("nan")
        self.optimizer.zero_grad()
        if self.loop.finite(loss.detach(), "toy loss", across_ranks=True):
            loss.backward()
            self.optimizer.step()
        if index == self.stop_after:
            self.stop.signum = signal.SIGTERM
        return {"loss": f"{float(loss.detach()):.3f}"}

    def run(self) -> None:
        self.loop.run(self.step)


def test_checkpoints_every_n_steps_and_once_at_the_end(tmp_path: Path) -> None:
    toy = Toy(tmp_path / "last.pt", total=7, every=3)
    order: list[str] = []
    toy.loop.run(toy.step, before_last_checkpoint=lambda: order.append(f"hook after {len(toy.saved_at)}"))
    assert toy.steps == list(range(7))
    assert toy.saved_at == [3, 6, 7]
    assert order == ["hook after 2"]  # after the steps, before the final checkpoint
    state = load_checkpoint(tmp_path / "last.pt", expect_stage=STAGE)
    assert state["step"] == 7 and len(state["draws"]) == 7
    assert set(state) == {"meta", "model", "optimizer", "draws", "guard", "rng", "step"}


def test_a_stop_request_ends_after_the_current_step_with_a_checkpoint(tmp_path: Path) -> None:
    toy = Toy(tmp_path / "last.pt", total=7, every=100, stop_after=2)
    with pytest.raises(StopRequested) as stopped:
        toy.run()
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert toy.steps == [0, 1, 2]
    assert toy.saved_at == [3]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_non_finite_steps_are_skipped_then_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BISSL_QUIET", raising=False)
    toy = Toy(tmp_path / "last.pt", total=10, every=1, max_nonfinite=3, nan_at={1, 3, 4, 5})
    weights: list[torch.Tensor] = []
    original = toy.step

    def step(index: int) -> dict[str, str]:
        shown = original(index)
        weights.append(toy.model.weight.detach().clone())
        return shown

    with pytest.raises(NonFiniteError) as failed:
        toy.loop.run(step)
    message = str(failed.value)
    assert "\n" not in message and "3 consecutive non-finite toy loss values at step 5" in message
    assert toy.steps == [0, 1, 2, 3, 4, 5]
    assert torch.equal(weights[1], weights[0]) and not torch.equal(weights[2], weights[1])  # 1 skipped
    assert torch.equal(weights[4], weights[2])  # 3 and 4 skipped
    assert capsys.readouterr().err.count("warning: non-finite toy loss") == 4
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 5  # the failing step wrote nothing
    assert state["guard"] == {"consecutive": 2, "skipped": 3}
    assert torch.equal(state["model"]["weight"], weights[4])


def test_resume_restores_parts_rng_and_position(tmp_path: Path) -> None:
    straight = Toy(tmp_path / "straight.pt", total=6, nan_at={1})
    straight.run()

    interrupted = Toy(tmp_path / "resumed.pt", total=6, nan_at={1}, stop_after=2)
    with pytest.raises(StopRequested):
        interrupted.run()
    resumed = Toy(tmp_path / "resumed.pt", total=6)
    assert resumed.loop.resumed and resumed.loop.start == 3
    assert resumed.loop.skipped == straight.loop.skipped == 1  # the guard's count is restored
    assert torch.equal(resumed.model.weight, interrupted.model.weight)  # the weights after step 3
    resumed.run()
    assert resumed.steps == [3, 4, 5]
    assert resumed.draws == straight.draws  # the first three restored, the rest drawn as in one run
    assert torch.equal(resumed.model.weight, straight.model.weight)
    assert torch.equal(resumed.model.bias, straight.model.bias)

    again = Toy(tmp_path / "resumed.pt", total=6, resume=False)
    assert not again.loop.resumed and again.loop.start == 0 and again.draws == []


def test_resume_refuses_another_stage_or_architecture(tmp_path: Path) -> None:
    Toy(tmp_path / "last.pt", total=2, architecture={"width": 4}).run()
    with pytest.raises(CheckpointError, match="written by stage 'toy-state', expected other-state"):
        Toy(tmp_path / "last.pt", stage="other-state", architecture={"width": 4})
    with pytest.raises(CheckpointError, match=r"model\.width=4 but the config says 8"):
        Toy(tmp_path / "last.pt", architecture={"width": 8})
    assert Toy(tmp_path / "last.pt", architecture={"width": 4}).loop.start == 2


class Counter:
    """A part that keeps its own count of steps done and its own non-finite guard (as the BiSSL trainer)."""

    def __init__(self) -> None:
        self.done = 0
        self.guard = NonFiniteGuard(2)

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = int(state["done"])
        self.guard.load_state_dict(state["guard"])


def _counted(path: Path, stop: GracefulStop) -> tuple[Counter, StageLoop]:
    counter = Counter()
    loop = StageLoop(
        "counted",
        5,
        checkpoint=path,
        stage=STAGE,
        parts={"counter": counter},
        guard=counter.guard,
        position=lambda: counter.done,
        every=2,
        stop=stop,
        resume=True,
    )
    return counter, loop


def test_a_part_may_keep_the_position_and_the_guard(tmp_path: Path) -> None:
    stop = GracefulStop()
    counter, loop = _counted(tmp_path / "last.pt", stop)

    def step(index: int) -> None:
        counter.done += 1
        if not loop.finite(float("nan") if index == 1 else 0.0, "count"):
            return
        if index == 2:
            stop.signum = signal.SIGINT

    with pytest.raises(StopRequested):
        loop.run(step)
    state = load_checkpoint(tmp_path / "last.pt")
    assert set(state) == {"meta", "counter", "rng"}  # no separate step or guard
    assert state["counter"] == {"done": 3, "guard": {"consecutive": 0, "skipped": 1}}
    counter, loop = _counted(tmp_path / "last.pt", GracefulStop())
    assert loop.start == 3 and loop.skipped == 1


def test_the_guard_is_either_the_loops_or_a_parts() -> None:
    common: dict[str, Any] = {"checkpoint": None, "stage": STAGE, "parts": {}, "every": 1, "resume": False}
    with pytest.raises(ValueError, match="either max_nonfinite"):
        StageLoop("x", 1, stop=GracefulStop(), **common)
    with pytest.raises(ValueError, match="either max_nonfinite"):
        StageLoop("x", 1, stop=GracefulStop(), max_nonfinite=2, guard=NonFiniteGuard(2), **common)
