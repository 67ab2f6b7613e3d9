"""Injected non-finite values: the step is skipped with a warning; N in a row stop the run with one line,
exit code 2, and the last good checkpoint intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bissl import cli
from bissl.bilevel import trainer as trainer_module
from bissl.pretext.simclr import SimCLR
from tests.tiny import TINY


def _poison_calls(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int] | None) -> None:
    """SimCLR.loss returns NaN on the listed calls (all calls when None)."""
    original = SimCLR.loss
    count = {"n": 0}

    def poisoned(self: SimCLR, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        count["n"] += 1
        loss = original(self, view1, view2)
        if bad_calls is None or count["n"] in bad_calls:
            return loss * float("nan")
        return loss

    monkeypatch.setattr(SimCLR, "loss", poisoned)


def test_pretrain_skips_injected_nans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _poison_calls(monkeypatch, {2, 3})
    monkeypatch.delenv("BISSL_QUIET", raising=False)
    out = tmp_path / "run"
    code = cli.main(
        [
            "pretrain",
            "--out",
            str(out),
            *TINY,
            "pretrain.steps=6",
            "pretrain.batch_size=16",
            "max_nonfinite=3",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] == 2
    assert torch.isfinite(torch.tensor(summary["final_loss"]))
    assert capsys.readouterr().err.count("non-finite pretext loss") == 2


def test_pretrain_stops_after_consecutive_nans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [
        "--quiet",
        "pretrain",
        "--out",
        str(out),
        *TINY,
        "pretrain.steps=20",
        "pretrain.batch_size=16",
        "pretrain.checkpoint_every=1",
        "max_nonfinite=3",
    ]
    _poison_calls(monkeypatch, set(range(4, 100)))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 consecutive non-finite" in err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    # steps 4 and 5 were skipped (weights unchanged since step 3); the failing step 6 wrote nothing
    assert state["step"] == 5 and state["guard"]["consecutive"] == 2
    assert all(torch.isfinite(t).all() for t in state["task"].values() if t.is_floating_point())


def test_bilevel_skips_non_finite_upper_gradients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        cli.main(
            [
                "--quiet",
                "pretrain",
                "--out",
                str(tmp_path / "pre"),
                *TINY,
                "pretrain.steps=2",
                "pretrain.batch_size=16",
            ]
        )
        == 0
    )
    original = trainer_module.upper_gradients
    calls = {"n": 0}

    def poisoned(**kwargs: object) -> object:
        result = original(**kwargs)  # type: ignore[arg-type]
        calls["n"] += 1
        if calls["n"] == 2:
            result.backbone = tuple(g * float("nan") for g in result.backbone)
        return result

    monkeypatch.setattr(trainer_module, "upper_gradients", poisoned)
    out = tmp_path / "bil"
    argv = [
        "--quiet",
        "bilevel",
        "--out",
        str(out),
        *TINY,
        f"pretext_checkpoint={tmp_path / 'pre' / 'checkpoints' / 'pretext.pt'}",
        "warmup.epochs=1",
        "bilevel.alternations=2",
        "bilevel.lower_steps=1",
        "bilevel.upper_steps=2",
        "bilevel.solver_iterations=1",
        "bilevel.lower_batch_size=16",
        "bilevel.upper_batch_size=16",
    ]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] == 1
    backbone = torch.load(out / "upper_backbone.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in backbone.values() if t.is_floating_point())
