"""Every user error ends with one line naming the problem, exit code 2, and no existing file changed."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bissl import cli
from bissl.data import embedded as datasets
from tests.cli_run import run_cli, snapshot

TINY = ["data.pretext=synthetic", "data.downstream=synthetic", "model.width=4", "model.blocks=[1]"]


@pytest.fixture(scope="module")
def pretext_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny pretraining run (reused by the checkpoint cases)."""
    out = tmp_path_factory.mktemp("pretrain")
    code = cli.main(
        ["--quiet", "pretrain", "--out", str(out), *TINY, "pretrain.steps=2", "pretrain.batch_size=16"]
    )
    assert code == 0
    return out


def _corrupt_fashion(tmp: Path) -> list[str]:
    folder = tmp / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        with gzip.open(folder / name, "wb") as stream:
            stream.write(b"\x00\x00\x08\x03not an idx file")
    return ["data.pretext=fashion-mnist", f"data.root={tmp / 'data'}"]


Case = tuple[str, Callable[[Path, Path], list[str]], str]

CASES: list[Case] = [
    ("unknown command", lambda t, p: ["frobnicate"], "invalid choice"),
    (
        "unknown top-level key",
        lambda t, p: ["pretrain", "--out", str(t / "o"), "learning_rate=0.1"],
        "learning_rate",
    ),
    (
        "unknown nested key",
        lambda t, p: ["pretrain", "--out", str(t / "o"), "pretext.temprature=0.1"],
        "pretext.temprature",
    ),
    ("wrong type", lambda t, p: ["pretrain", "--out", str(t / "o"), "bilevel.lam=abc"], "bilevel.lam"),
    ("bad choice", lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.solver=magic"], "bilevel.solver"),
    ("out of range", lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.lam=-1"], "bilevel.lam"),
    ("override without =", lambda t, p: ["pretrain", "--out", str(t / "o"), "pretrain.lr"], "key=value"),
    (
        "missing config file",
        lambda t, p: ["pretrain", "--config", str(t / "none.yaml"), "--out", str(t / "o")],
        "none.yaml",
    ),
    (
        "unknown config name",
        lambda t, p: ["pretrain", "--config", "dmeo", "--out", str(t / "o")],
        "shipped configs: demo",
    ),
    (
        "channels out of range",
        lambda t, p: ["pretrain", "--out", str(t / "o"), "data.channels=2"],
        "data.channels",
    ),
    (
        "invalid YAML",
        lambda t, p: _write(
            t / "bad.yaml", "a: [1, 2\n", ["pretrain", "--config", str(t / "bad.yaml"), "--out", str(t / "o")]
        ),
        "not valid YAML",
    ),
    (
        "YAML not a mapping",
        lambda t, p: _write(
            t / "list.yaml",
            "- 1\n- 2\n",
            ["pretrain", "--config", str(t / "list.yaml"), "--out", str(t / "o")],
        ),
        "mapping",
    ),
    (
        "unknown dataset",
        lambda t, p: ["pretrain", "--out", str(t / "o"), "data.pretext=imagenot"],
        "imagenot",
    ),
    (
        "corrupted dataset",
        lambda t, p: ["pretrain", "--out", str(t / "o"), *_corrupt_fashion(t)],
        "fashion-mnist",
    ),
    (
        "bad val fraction",
        lambda t, p: ["finetune", "--out", str(t / "o"), "data.val_fraction=1.5"],
        "data.val_fraction",
    ),
    (
        "bad search range",
        lambda t, p: ["search", "--out", str(t / "o"), "search.lr_range=[1.0, 0.1]"],
        "search.lr_range",
    ),
    ("missing --out", lambda t, p: ["pretrain"], "--out"),
    (
        "bilevel without checkpoint",
        lambda t, p: ["bilevel", "--out", str(t / "o"), *TINY],
        "pretext_checkpoint",
    ),
    (
        "missing checkpoint",
        lambda t, p: ["bilevel", "--out", str(t / "o"), *TINY, f"pretext_checkpoint={t / 'nope.pt'}"],
        "does not exist",
    ),
    (
        "truncated checkpoint",
        lambda t, p: ["warmup", "--out", str(t / "o"), *TINY, f"pretext_checkpoint={_truncated(t, p)}"],
        "truncated",
    ),
    (
        "foreign checkpoint",
        lambda t, p: ["warmup", "--out", str(t / "o"), *TINY, f"pretext_checkpoint={_foreign(t)}"],
        "not a bissl checkpoint",
    ),
    (
        "wrong-stage checkpoint",
        lambda t, p: [
            "warmup",
            "--out",
            str(t / "o"),
            *TINY,
            f"pretext_checkpoint={p / 'checkpoints' / 'last.pt'}",
        ],
        "expected pretrain",
    ),
    (
        "architecture mismatch",
        lambda t, p: [
            "warmup",
            "--out",
            str(t / "o"),
            *TINY,
            "model.width=8",
            f"pretext_checkpoint={p / 'checkpoints' / 'pretext.pt'}",
        ],
        "model.width",
    ),
    (
        "method mismatch",
        lambda t, p: [
            "warmup",
            "--out",
            str(t / "o"),
            *TINY,
            "pretext.method=byol",
            f"pretext_checkpoint={p / 'checkpoints' / 'pretext.pt'}",
        ],
        "pretext.method",
    ),
    (
        "backbone mismatch",
        lambda t, p: [
            "finetune",
            "--out",
            str(t / "o"),
            *TINY,
            "model.blocks=[1,1]",
            f"backbone={p / 'backbone.pt'}",
        ],
        "model.blocks",
    ),
    (
        "missing backbone",
        lambda t, p: ["finetune", "--out", str(t / "o"), *TINY, f"backbone={t / 'none.pt'}"],
        "does not exist",
    ),
    ("output not writable", lambda t, p: ["pretrain", "--out", str(_file(t) / "sub"), *TINY], "not writable"),
    (
        "output from another config",
        lambda t, p: ["pretrain", "--out", str(p), *TINY, "pretrain.steps=3"],
        "different config",
    ),
    ("report without results", lambda t, p: ["report", str(t)], "results.json"),
    (
        "cg iterations < 1",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.solver_iterations=0"],
        "bilevel.solver_iterations",
    ),
    (
        "minres iterations < 1",
        lambda t, p: [
            "bilevel",
            "--out",
            str(t / "o"),
            "bilevel.solver=minres",
            "bilevel.solver_iterations=0",
        ],
        "bilevel.solver_iterations",
    ),
    (
        "neumann iterations < 1",
        lambda t, p: [
            "bilevel",
            "--out",
            str(t / "o"),
            "bilevel.solver=neumann",
            "bilevel.solver_iterations=-2",
        ],
        "bilevel.solver_iterations",
    ),
    (
        "bad curvature",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.curvature=fisher"],
        "bilevel.curvature",
    ),
    (
        "low-rank rank < 1",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.solver=lowrank", "bilevel.lowrank_rank=0"],
        "bilevel.lowrank_rank",
    ),
    (
        "refinement iterations < 1",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.lowrank_refine_iterations=0"],
        "bilevel.lowrank_refine_iterations",
    ),
    (
        "bad negative treatment",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.lowrank_negative=flip"],
        "bilevel.lowrank_negative",
    ),
    (
        "bad refinement",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.lowrank_refine=gmres"],
        "bilevel.lowrank_refine",
    ),
    (
        "nystrom on the Hessian",
        lambda t, p: [
            "bilevel",
            "--out",
            str(t / "o"),
            "bilevel.solver=lowrank",
            "bilevel.lowrank_method=nystrom",
        ],
        "bilevel.curvature=ggn",
    ),
    (
        "ggn with forward-over-reverse",
        lambda t, p: [
            "bilevel",
            "--out",
            str(t / "o"),
            "bilevel.curvature=ggn",
            "bilevel.hvp_mode=forward-over-reverse",
        ],
        "bilevel.hvp_mode",
    ),
    (
        "diagnostics every < 0",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.diagnose_every=-1"],
        "bilevel.diagnose_every",
    ),
    (
        "Lanczos steps < 1",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.diagnose_steps=0"],
        "bilevel.diagnose_steps",
    ),
    (
        "bad damping margin",
        lambda t, p: ["bilevel", "--out", str(t / "o"), "bilevel.damping_margin=1.5"],
        "bilevel.damping_margin",
    ),
    (
        "damping cap below damping",
        lambda t, p: [
            "bilevel",
            "--out",
            str(t / "o"),
            "bilevel.adaptive_damping=true",
            "bilevel.damping_max=1",
        ],
        "bilevel.damping_max",
    ),
    ("curvature without checkpoint", lambda t, p: ["curvature", *TINY], "pretext_checkpoint"),
    (
        "curvature with a missing checkpoint",
        lambda t, p: ["curvature", *TINY, f"pretext_checkpoint={t / 'nope.pt'}"],
        "does not exist",
    ),
    (
        "curvature with a wrong-stage head",
        lambda t, p: [
            "curvature",
            *TINY,
            f"pretext_checkpoint={p / 'checkpoints' / 'pretext.pt'}",
            f"head_checkpoint={p / 'checkpoints' / 'pretext.pt'}",
        ],
        "expected warmup",
    ),
    (
        "curvature with a bad knob",
        lambda t, p: ["curvature", *TINY, "bilevel.diagnose_steps=0"],
        "bilevel.diagnose_steps",
    ),
]


def _write(path: Path, text: str, argv: list[str]) -> list[str]:
    path.write_text(text)
    return argv


def _truncated(tmp: Path, pretext: Path) -> Path:
    data = (pretext / "checkpoints" / "pretext.pt").read_bytes()
    target = tmp / "truncated.pt"
    target.write_bytes(data[: len(data) // 2])
    return target


def _foreign(tmp: Path) -> Path:
    target = tmp / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, target)
    return target


def _file(tmp: Path) -> Path:
    target = tmp / "a-file"
    target.write_text("x")
    return target


@pytest.mark.parametrize(("name", "make_argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_exit_2_and_changes_nothing(
    name: str,
    make_argv: Callable[[Path, Path], list[str]],
    expected: str,
    tmp_path: Path,
    pretext_run: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BISSL_DATA", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST", str(tmp_path / "no-system-copy"))
    argv = make_argv(tmp_path, pretext_run)
    before_run, before_tmp = snapshot(pretext_run), snapshot(tmp_path)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    assert "Traceback" not in err
    assert snapshot(pretext_run) == before_run
    assert snapshot(tmp_path) == before_tmp


def test_missing_dataset_names_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BISSL_DATA", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST", str(tmp_path / "no-system-copy"))
    code = cli.main(["--quiet", "pretrain", "--out", str(tmp_path / "o"), f"data.root={tmp_path / 'empty'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "no-system-copy" in err and "dataset-fashion-mnist" in err


def test_debug_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--debug", "--quiet", "bilevel", "--out", str(tmp_path / "o"), *TINY])
    assert code == 2
    assert "Traceback" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """device=cuda on a machine without CUDA (simulated, so a GPU host checks the same message)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main(["--quiet", "pretrain", "--out", str(tmp_path / "o"), *TINY, "device=cuda"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "config key 'device' is 'cuda' but no CUDA device is available; use device=cpu" in err
    assert not (tmp_path / "o").exists()
