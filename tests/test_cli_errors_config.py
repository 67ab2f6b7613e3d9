"""Bad config values and files stop every command before any work starts: one line naming the key or the
file, exit code 2, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bissl import runtime
from tests.cli_run import run_cli, snapshot


def _stage(command: str, *overrides: str) -> Callable[[Path], list[str]]:
    """argv of ``command`` into a fresh --out folder with ``overrides``."""
    return lambda t: [command, "--out", str(t / "o"), *overrides]


def _file(name: str, content: bytes, command: str = "pretrain") -> Callable[[Path], list[str]]:
    """argv of ``command`` with --config a file of ``content`` written into the test folder."""

    def build(t: Path) -> list[str]:
        (t / name).write_bytes(content)
        return [command, "--config", str(t / name), "--out", str(t / "o")]

    return build


def _folder(t: Path) -> list[str]:
    (t / "settings.yaml").mkdir()
    return ["pretrain", "--config", str(t / "settings.yaml"), "--out", str(t / "o")]


Case = tuple[str, Callable[[Path], list[str]], str]

CASES: list[Case] = [
    ("k-NN k of 0", _stage("evaluate", "eval.knn_k=0"), "config key 'eval.knn_k' must be >= 1, got 0"),
    (
        "k-NN temperature of 0",
        _stage("evaluate", "eval.knn_temperature=0"),
        "'eval.knn_temperature' must be > 0",
    ),
    ("feature batch of 0", _stage("evaluate", "eval.batch_size=0"), "'eval.batch_size' must be >= 1"),
    ("probe epochs of 0", _stage("evaluate", "eval.probe_epochs=0"), "'eval.probe_epochs' must be >= 1"),
    (
        "negative t-SNE samples",
        _stage("evaluate", "eval.tsne_samples=-1"),
        "'eval.tsne_samples' must be >= 0",
    ),
    ("monitor k of 0", _stage("pretrain", "pretrain.knn_k=0"), "'pretrain.knn_k' must be >= 1"),
    ("negative monitor interval", _stage("pretrain", "pretrain.knn_every=-1"), "'pretrain.knn_every'"),
    ("log every 0 steps", _stage("pretrain", "pretrain.log_every=0"), "'pretrain.log_every' must be >= 1"),
    (
        "pretrain checkpoint every 0 steps",
        _stage("pretrain", "pretrain.checkpoint_every=0"),
        "'pretrain.checkpoint_every' must be >= 1",
    ),
    (
        "evaluate every 0 epochs",
        _stage("finetune", "finetune.eval_every=0"),
        "'finetune.eval_every' must be >= 1",
    ),
    (
        "fine-tune checkpoint every 0 epochs",
        _stage("finetune", "finetune.checkpoint_every=0"),
        "'finetune.checkpoint_every' must be >= 1",
    ),
    (
        "bilevel checkpoint every 0 alternations",
        _stage("bilevel", "bilevel.checkpoint_every=0"),
        "'bilevel.checkpoint_every' must be >= 1",
    ),
    (
        "infinite lambda",
        _stage("bilevel", "bilevel.lam=.inf"),
        "'bilevel.lam' must be finite and > 0, got inf",
    ),
    ("infinite pretrain lr", _stage("pretrain", "pretrain.lr=.inf"), "'pretrain.lr' must be finite and > 0"),
    ("infinite fine-tune lr", _stage("finetune", "finetune.lr=.inf"), "'finetune.lr' must be finite and > 0"),
    (
        "nan temperature",
        _stage("pretrain", "pretext.temperature=.nan"),
        "'pretext.temperature' must be finite",
    ),
    ("pretrain 0 epochs", _stage("pretrain", "pretrain.epochs=0"), "'pretrain.epochs' must be >= 1"),
    ("pretrain 0 steps", _stage("pretrain", "pretrain.steps=0"), "'pretrain.steps' must be >= 1"),
    ("warm-up 0 epochs", _stage("warmup", "warmup.epochs=0"), "'warmup.epochs' must be >= 1"),
    (
        "projector of width 0",
        _stage("pretrain", "pretext.projector_dim=0"),
        "'pretext.projector_dim' must be >= 1",
    ),
    (
        "projector hidden width 0",
        _stage("pretrain", "pretext.projector_hidden=[256, 0]"),
        "'pretext.projector_hidden[1]' must be >= 1",
    ),
    (
        "negative warm-up epochs",
        _stage("pretrain", "pretrain.warmup_epochs=-1"),
        "'pretrain.warmup_epochs' must be >= 0",
    ),
    ("search trials of 0 epochs", _stage("search", "search.epochs=0"), "'search.epochs' must be >= 1"),
    (
        "Hessian batch of 0",
        _stage("bilevel", "bilevel.hessian_batch_size=0"),
        "'bilevel.hessian_batch_size' must be >= 2 (a pretext batch needs two images)",
    ),
    (
        "lower batch of 1",
        _stage("bilevel", "bilevel.lower_batch_size=1"),
        "'bilevel.lower_batch_size' must be >= 2",
    ),
    ("warm-up batch of 0", _stage("bilevel", "warmup.batch_size=0"), "'warmup.batch_size' must be >= 1"),
    (
        "data limit of 0",
        _stage("finetune", "data.downstream_limit=0"),
        "'data.downstream_limit' must be >= 1",
    ),
    ("negative seed", _stage("pretrain", "seed=-1"), "config key 'seed' must be in [0, 4294967295], got -1"),
    ("no compare arms", _stage("compare", "compare.arms=[]"), "'compare.arms' is empty"),
    (
        "compare arm twice",
        _stage("compare", "compare.arms=[bissl, bissl]"),
        "'compare.arms' names an arm twice",
    ),
    (
        "jitter probability of 2",
        _stage("pretrain", "augment.jitter_p=2"),
        "'augment.jitter_p' must be in [0, 1]",
    ),
    (
        "blur probability of 2",
        _stage("pretrain", "augment.blur_p=[1.0, 2]"),
        "'augment.blur_p[1]' must be in [0, 1]",
    ),
    ("hue above 0.5", _stage("pretrain", "augment.jitter=[0.4, 0.4, 0.2, 0.6]"), "'augment.jitter[3]' (hue)"),
    (
        "crop scale of one value",
        _stage("pretrain", "augment.crop_scale=[0.5]"),
        "'augment.crop_scale' must be",
    ),
    ("momentum of 1", _stage("finetune", "finetune.momentum=1"), "'finetune.momentum' must be in [0, 1)"),
    ("clip at 0", _stage("pretrain", "pretrain.clip_grad=0"), "'pretrain.clip_grad' must be > 0"),
    (
        "Neumann step of 0",
        _stage("bilevel", "bilevel.neumann_scale=0"),
        "'bilevel.neumann_scale' must be > 0",
    ),
    (
        "VICReg with Gauss-Newton curvature",
        _stage("bilevel", "pretext.method=vicreg", "bilevel.curvature=ggn"),
        "config key 'bilevel.curvature' is ggn, but pretext.method=vicreg has no convex split for "
        "Gauss–Newton curvature (its covariance term is quartic in the embeddings, its variance hinge is "
        "not convex); set bilevel.curvature=hessian",
    ),
    (
        "key twice in a config file",
        _file("twice.yaml", b"bilevel:\n  lam: 0.1\n  lam: 0.2\n"),
        "twice.yaml' has key 'bilevel.lam' twice (line 3); keep one",
    ),
    (
        "top-level key twice",
        _file("seeds.yaml", b"seed: 1\npretrain:\n  lr: 1.0\nseed: 2\n", "finetune"),
        "has key 'seed' twice (line 4)",
    ),
    (
        "config file not UTF-8",
        _file("latin.yaml", "# r\u00e9glages\nseed: 1\n".encode("latin-1")),
        "latin.yaml' is not UTF-8 text",
    ),
    ("folder as --config", _folder, "settings.yaml' is a folder, not a YAML file"),
    (
        "config show with a bad value",
        lambda t: ["config", "show", "bilevel.lam=.inf"],
        "'bilevel.lam' must be",
    ),
]


@pytest.mark.parametrize(("name", "make_argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_exit_2_before_any_work(
    name: str,
    make_argv: Callable[[Path], list[str]],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{name}: the run started; the config should have been refused")

    monkeypatch.setattr(runtime, "RunDir", no_work)
    argv = make_argv(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    assert "Traceback" not in err and "ViewOptions" not in err
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "o").exists()
