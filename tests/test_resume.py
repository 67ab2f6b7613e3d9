"""Every stage stopped by SIGTERM after some steps and rerun ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bissl import cli
from bissl.checkpoint import save_checkpoint
from tests.tiny import TINY, flat_tensors


def _run(argv: list[str]) -> int:
    return cli.main(["--quiet", *argv])


def _interrupted(argv: list[str], out: Path, wait_for: Path) -> int:
    """Start the command in a child process, SIGTERM it once ``wait_for`` exists, return its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BISSL_QUIET": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "bissl", *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not wait_for.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert "checkpoint written" in err
    return process.returncode


def _assert_identical(a: Path, b: Path) -> None:
    left, right = flat_tensors(a), flat_tensors(b)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.fixture(scope="module")
def pretext(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretext")
    assert _run(["pretrain", "--out", str(out), *TINY, "pretrain.steps=2", "pretrain.batch_size=16"]) == 0
    return out / "checkpoints" / "pretext.pt"


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, pretext: Path) -> Path:
    out = tmp_path_factory.mktemp("warm")
    assert _run(["warmup", "--out", str(out), *TINY, f"pretext_checkpoint={pretext}", "warmup.epochs=1"]) == 0
    return out / "checkpoints" / "head.pt"


def _stage_cases(pretext: Path, head: Path) -> dict[str, tuple[list[str], str, str]]:
    """stage -> (argv after --out, file that appears once a step is done, file to compare)."""
    return {
        "pretrain": (
            [
                "pretrain",
                *TINY,
                "pretrain.steps=15",
                "pretrain.batch_size=16",
                "pretrain.log_every=1",
                "pretrain.checkpoint_every=1000",
            ],
            "metrics.jsonl",
            "checkpoints/pretext.pt",
        ),
        "warmup": (
            ["warmup", *TINY, f"pretext_checkpoint={pretext}", "warmup.epochs=12", "warmup.batch_size=32"],
            "checkpoints/last.pt",
            "checkpoints/head.pt",
        ),
        "bilevel": (
            [
                "bilevel",
                *TINY,
                f"pretext_checkpoint={pretext}",
                f"head_checkpoint={head}",
                "bilevel.alternations=6",
                "bilevel.lower_steps=2",
                "bilevel.upper_steps=2",
                "bilevel.solver_iterations=2",
                "bilevel.lower_batch_size=16",
                "bilevel.upper_batch_size=16",
                "bilevel.checkpoint_every=100",
            ],
            "metrics.jsonl",
            "lower_backbone.pt",
        ),
        "finetune": (
            [
                "finetune",
                *TINY,
                f"backbone={pretext}",
                "finetune.epochs=12",
                "finetune.batch_size=32",
                "finetune.checkpoint_every=1000",
            ],
            "metrics.jsonl",
            "checkpoints/last.pt",
        ),
    }


ADAMW = {
    "pretrain": ["pretrain.optimizer=adamw", "pretrain.lr=1e-3"],
    "bilevel": [
        "bilevel.lower_optimizer=adamw",
        "bilevel.upper_optimizer=adamw",
        "bilevel.lower_lr=1e-3",
        "bilevel.upper_lr=1e-3",
    ],
    "finetune": ["finetune.optimizer=adamw", "finetune.lr=1e-3"],
}
"""The AdamW variants of the stages (the warm-up's AdamW is the fine-tuning's classifier loop): its moment
estimates and step counts are in the checkpoint, so the resumed run is bit-identical too."""


@pytest.mark.parametrize(
    "stage", ["pretrain", "warmup", "bilevel", "finetune", *(f"{stage}-adamw" for stage in ADAMW)]
)
def test_sigterm_then_resume_is_bit_identical(stage: str, tmp_path: Path, pretext: Path, head: Path) -> None:
    base, _, variant = stage.partition("-")
    argv, marker, result = _stage_cases(pretext, head)[base]
    if variant:
        argv = [*argv, *ADAMW[base]]
    command, overrides = argv[0], argv[1:]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _run([command, "--out", str(straight), *overrides]) == 0
    _interrupted([command, "--out", str(resumed), *overrides], resumed, resumed / marker)
    assert (resumed / "checkpoints" / "last.pt").is_file()
    assert _run([command, "--out", str(resumed), *overrides]) == 0
    _assert_identical(straight / result, resumed / result)


def test_truncated_write_never_replaces_the_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"meta": {"stage": "x"}, "value": torch.ones(3)})

    def broken_save(obj: object, stream: object) -> None:
        stream.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(target, {"meta": {"stage": "x"}, "value": torch.zeros(3)})
    monkeypatch.undo()
    state = torch.load(target, weights_only=True)
    assert torch.equal(state["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
