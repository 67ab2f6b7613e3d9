"""``bissl curvature`` on a tiny pretext checkpoint: one line per quantity, nothing written without --out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bissl import cli
from bissl.pretext import PRETEXT_TASKS
from tests.cli_run import snapshot
from tests.tiny import TINY

SMALL = ["bilevel.hessian_batch_size=8", "bilevel.upper_batch_size=8", "bilevel.diagnose_steps=6"]
LINE_PREFIXES = (
    "curvature:",
    "lambda_min:",
    "lambda_max:",
    "below -(lam+delta):",
    "positive definite:",
    "true residual:",
    "cos(x, v):",
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny pretext checkpoint and a warm-up head trained from it."""
    root = tmp_path_factory.mktemp("curvature")
    pretext = root / "pretrain"
    assert (
        cli.main(
            [
                "--quiet",
                "pretrain",
                "--out",
                str(pretext),
                *TINY,
                "pretrain.steps=2",
                "pretrain.batch_size=16",
            ]
        )
        == 0
    )
    checkpoint = pretext / "checkpoints" / "pretext.pt"
    warm = root / "warmup"
    assert (
        cli.main(
            [
                "--quiet",
                "warmup",
                "--out",
                str(warm),
                *TINY,
                f"pretext_checkpoint={checkpoint}",
                "warmup.epochs=1",
            ]
        )
        == 0
    )
    return {"root": root, "pretext": checkpoint, "head": warm / "checkpoints" / "head.pt"}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    assert cli.main(["--quiet", "curvature", *argv]) == 0
    return capsys.readouterr().out.strip().splitlines()


def _value(lines: list[str], prefix: str) -> str:
    (line,) = [line for line in lines if line.startswith(prefix)]
    return line[len(prefix) :].split()[0]


def test_prints_one_line_per_quantity_and_writes_nothing(
    checkpoints: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    before = snapshot(checkpoints["root"])
    lines = _run([*TINY, *SMALL, f"pretext_checkpoint={checkpoints['pretext']}"], capsys)
    assert [line.split(":")[0] + ":" for line in lines] == [p.split(":")[0] + ":" for p in LINE_PREFIXES]
    lambda_min, lambda_max = float(_value(lines, "lambda_min:")), float(_value(lines, "lambda_max:"))
    assert math.isfinite(lambda_min) and lambda_min <= lambda_max
    below = int(_value(lines, "below -(lam+delta):"))
    definite = _value(lines, "positive definite:")
    assert definite in ("yes", "no")
    assert (definite == "yes") == (below == 0)
    assert math.isfinite(float(_value(lines, "true residual:")))
    assert -1 <= float(_value(lines, "cos(x, v):")) <= 1
    assert "freshly initialised linear head" in lines[-1]
    assert "6 Lanczos steps" in lines[0]
    assert snapshot(checkpoints["root"]) == before
    assert list(tmp_path.iterdir()) == []


def test_head_checkpoint_ggn_and_out(
    checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "curvature"
    lines = _run(
        [
            "--out",
            str(out),
            *TINY,
            *SMALL,
            "bilevel.curvature=ggn",
            "bilevel.solver=lowrank",
            "bilevel.lowrank_method=nystrom",
            "bilevel.lowrank_rank=4",
            f"pretext_checkpoint={checkpoints['pretext']}",
            f"head_checkpoint={checkpoints['head']}",
        ],
        capsys,
    )
    assert "Gauss–Newton" in lines[0]
    assert _value(lines, "positive definite:") == "yes"  # Gauss–Newton curvature is PSD
    assert f"warm-up head of {checkpoints['head']}" in lines[-1]
    assert "lowrank (k=4, nystrom" in lines[-2]
    saved = json.loads((out / "curvature.json").read_text())
    assert saved["curvature"] == "ggn" and saved["positive_definite"] is True
    assert saved["lambda_min"] == pytest.approx(float(_value(lines, "lambda_min:")), rel=1e-5)
    assert saved["products"] == 6 + 4 + 1  # Lanczos, the basis, the true residual
    assert sorted(p.name for p in out.iterdir()) == ["curvature.json"]


@pytest.mark.parametrize("method", PRETEXT_TASKS)
def test_every_pretext_method_with_the_hessian(
    method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pretext = tmp_path / "pretrain"
    small_head = ["pretext.dino_out_dim=16"] if method == "dino" else []
    method_overrides = [f"pretext.method={method}", *small_head]
    argv = ["--quiet", "pretrain", "--out", str(pretext), *TINY, *method_overrides, "pretrain.steps=1"]
    assert cli.main([*argv, "pretrain.batch_size=16"]) == 0
    checkpoint = pretext / "checkpoints" / "pretext.pt"
    lines = _run([*TINY, *SMALL, *method_overrides, f"pretext_checkpoint={checkpoint}"], capsys)
    assert [line.split(":")[0] + ":" for line in lines] == [p.split(":")[0] + ":" for p in LINE_PREFIXES]
    assert "Hessian" in lines[0]
    lambda_min, lambda_max = float(_value(lines, "lambda_min:")), float(_value(lines, "lambda_max:"))
    assert math.isfinite(lambda_min) and lambda_min <= lambda_max and lambda_max > 0
    assert math.isfinite(float(_value(lines, "true residual:")))
    if method in ("barlow_twins", "mocov3", "dino"):
        ggn = _run(
            [*TINY, *SMALL, *method_overrides, "bilevel.curvature=ggn", f"pretext_checkpoint={checkpoint}"],
            capsys,
        )
        assert "Gauss–Newton" in ggn[0]
        assert _value(ggn, "positive definite:") == "yes"
