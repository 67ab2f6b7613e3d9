"""Real launches through torchrun with two CPU processes (gloo): the whole comparison against one process,
and a stage stopped by SIGTERM and rerun, bit-identical to an uninterrupted two-process run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from bissl import cli
from tests.tiny import flat_tensors

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data.pretext=synthetic",
    "data.downstream=synthetic",
    "model.width=4",
    "model.blocks=[1]",
    "model.sync_bn=true",
    "data.image_size=12",
    "pretext.projector_hidden=[8]",
    "pretext.projector_dim=8",
]


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "BISSL_QUIET": "1"}


LAUNCHER = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _torchrun(argv: list[str]) -> list[str]:
    return [*LAUNCHER, "-m", "bissl", "--quiet", *argv]


def _launch(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _torchrun(argv), env=_environment(), cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def _structure(value: Any) -> Any:
    """Keys, value kinds and list lengths of a JSON document, without the values."""
    if isinstance(value, dict):
        return {key: _structure(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [len(value), *(_structure(item) for item in value[:1])]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return type(value).__name__
    return "number"


def test_compare_under_torchrun_matches_the_single_process_structure(tmp_path: Path) -> None:
    config = str(ROOT / "configs" / "smoke-ddp.yaml")
    single, launched = tmp_path / "single", tmp_path / "torchrun"
    single.mkdir()
    launched.mkdir()
    assert cli.main(["--quiet", "compare", "--config", config, "--out", str(single)]) == 0
    started = time.perf_counter()
    process = _launch(["compare", "--config", config, "--out", str(launched)])
    seconds = time.perf_counter() - started
    assert process.returncode == 0, process.stderr[-3000:]
    one = json.loads((single / "results.json").read_text())
    two = json.loads((launched / "results.json").read_text())
    assert _structure(two) == _structure(one)
    assert set(two["arms"]) == {"baseline", "bissl"}
    print(f"torchrun compare: {seconds:.1f} s")


def _interrupted(argv: list[str], wait_for: Path) -> int:
    """Launch, send SIGTERM to every process of the launch once ``wait_for`` exists (as a batch scheduler
    does), return torchrun's exit code."""
    process = subprocess.Popen(
        _torchrun(argv),
        env=_environment(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not wait_for.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=600)
    assert "checkpoint written" in err, err[-3000:]
    return process.returncode


@pytest.fixture(scope="module")
def pretext(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretext")
    argv = ["pretrain", "--out", str(out), *TINY, "pretrain.steps=2", "pretrain.batch_size=16"]
    assert cli.main(["--quiet", *argv]) == 0
    return out / "checkpoints" / "pretext.pt"


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, pretext: Path) -> Path:
    out = tmp_path_factory.mktemp("warm")
    argv = ["warmup", "--out", str(out), *TINY, f"pretext_checkpoint={pretext}", "warmup.epochs=1"]
    assert cli.main(["--quiet", *argv]) == 0
    return out / "checkpoints" / "head.pt"


def _stage(name: str, pretext: Path, head: Path) -> tuple[list[str], str, str]:
    """(argv after --out, file that appears once a step is done, file to compare)."""
    if name == "pretrain":
        overrides = ["pretrain.steps=12", "pretrain.batch_size=8", "pretrain.log_every=1"]
        return (
            ["pretrain", *TINY, *overrides, "pretrain.checkpoint_every=1000"],
            "metrics.jsonl",
            "checkpoints/pretext.pt",
        )
    overrides = [
        f"pretext_checkpoint={pretext}",
        f"head_checkpoint={head}",
        "bilevel.alternations=5",
        "bilevel.lower_steps=2",
        "bilevel.upper_steps=2",
        "bilevel.solver_iterations=2",
        "bilevel.lower_batch_size=8",
        "bilevel.upper_batch_size=8",
        "bilevel.checkpoint_every=100",
    ]
    return ["bilevel", *TINY, *overrides], "metrics.jsonl", "lower_backbone.pt"


@pytest.mark.parametrize("stage", ["pretrain", "bilevel"])
def test_sigterm_then_resume_under_torchrun_is_bit_identical(
    stage: str, tmp_path: Path, pretext: Path, head: Path
) -> None:
    argv, marker, result = _stage(stage, pretext, head)
    command, overrides = argv[0], argv[1:]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    process = _launch([command, "--out", str(straight), *overrides])
    assert process.returncode == 0, process.stderr[-3000:]
    assert _interrupted([command, "--out", str(resumed), *overrides], resumed / marker) != 0
    assert (resumed / "checkpoints" / "last.pt").is_file()
    assert not (resumed / result).exists()
    process = _launch([command, "--out", str(resumed), *overrides])
    assert process.returncode == 0, process.stderr[-3000:]
    left, right = flat_tensors(straight / result), flat_tensors(resumed / result)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key
