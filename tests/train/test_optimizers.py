"""The optimiser of each stage (``pretrain.optimizer``, ``warmup.optimizer``, ``finetune.optimizer``,
``bilevel.lower_optimizer``, ``bilevel.upper_optimizer``): every stage builds AdamW when asked (search trials
included), the defaults build the very optimisers the stages constructed directly before the keys existed
(bit-identical checkpoints), and resuming under another optimiser stops in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bissl import cli
from bissl.config import load_config
from bissl.optim import LARS, lars_groups, make_optimizer, saved_optimizer_kind
from tests.tiny import TINY, flat_tensors


def _run(argv: list[str]) -> int:
    return cli.main(["--quiet", *argv])


PRETRAIN = ["pretrain.steps=2", "pretrain.batch_size=16"]
WARMUP = ["warmup.epochs=1", "warmup.batch_size=32"]
BILEVEL = [
    "bilevel.alternations=1",
    "bilevel.lower_steps=2",
    "bilevel.upper_steps=2",
    "bilevel.solver_iterations=2",
    "bilevel.lower_batch_size=16",
    "bilevel.upper_batch_size=16",
    "pretext.projector_warmup_steps=2",
]
FINETUNE = ["finetune.epochs=1", "finetune.batch_size=32"]


@pytest.fixture(scope="module")
def pretext(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretext")
    assert _run(["pretrain", "--out", str(out), *TINY, *PRETRAIN]) == 0
    return out / "checkpoints" / "pretext.pt"


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, pretext: Path) -> Path:
    out = tmp_path_factory.mktemp("warm")
    assert _run(["warmup", "--out", str(out), *TINY, f"pretext_checkpoint={pretext}", *WARMUP]) == 0
    return out / "checkpoints" / "head.pt"


def _state(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def _assert_adamw(state: dict[str, Any]) -> None:
    """An AdamW state with PyTorch's betas, its 1-D parameters in a group without weight decay."""
    assert saved_optimizer_kind(state) == "adamw"
    groups = state["param_groups"]
    assert all(g["betas"] == (0.9, 0.999) for g in groups)
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] > 0
    assert state["state"], "no moment estimates: the optimiser never stepped"


def test_every_stage_builds_adamw_when_asked(tmp_path: Path, pretext: Path, head: Path) -> None:
    out = tmp_path
    assert _run(["pretrain", "--out", str(out / "pre"), *TINY, *PRETRAIN, "pretrain.optimizer=adamw"]) == 0
    _assert_adamw(_state(out / "pre" / "checkpoints" / "last.pt")["optimizer"])

    # the warm-up follows bilevel.upper_optimizer unless warmup.optimizer is set
    for name, choice in (("warm-upper", "bilevel.upper_optimizer=adamw"), ("warm", "warmup.optimizer=adamw")):
        argv = ["warmup", "--out", str(out / name), *TINY, f"pretext_checkpoint={pretext}", *WARMUP, choice]
        assert _run(argv) == 0
        _assert_adamw(_state(out / name / "checkpoints" / "last.pt")["optimizer"])
    argv = ["warmup", "--out", str(out / "warm-sgd"), *TINY, f"pretext_checkpoint={pretext}", *WARMUP]
    assert _run([*argv, "bilevel.upper_optimizer=adamw", "warmup.optimizer=sgd"]) == 0
    assert saved_optimizer_kind(_state(out / "warm-sgd" / "checkpoints" / "last.pt")["optimizer"]) == "sgd"

    argv = ["bilevel", "--out", str(out / "bi"), *TINY, f"pretext_checkpoint={pretext}"]
    argv += [f"head_checkpoint={head}", *BILEVEL]
    assert _run([*argv, "bilevel.lower_optimizer=adamw", "bilevel.upper_optimizer=adamw"]) == 0
    trainer = _state(out / "bi" / "checkpoints" / "last.pt")["trainer"]
    _assert_adamw(trainer["lower_optimizer"])
    _assert_adamw(trainer["upper_optimizer"])
    _assert_adamw(_state(out / "bi" / "checkpoints" / "projector_warmup.pt")["optimizer"])

    argv = ["finetune", "--out", str(out / "ft"), *TINY, f"backbone={pretext}", *FINETUNE]
    assert _run([*argv, "finetune.optimizer=adamw"]) == 0
    _assert_adamw(_state(out / "ft" / "checkpoints" / "last.pt")["optimizer"])


def test_search_trials_and_seed_runs_fine_tune_with_the_configured_optimizer(
    tmp_path: Path, pretext: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bissl.train import classifier

    built: list[torch.optim.Optimizer] = []

    def recording(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        built.append(make_optimizer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(classifier, "make_optimizer", recording)
    argv = ["search", "--out", str(tmp_path), *TINY, f"backbone={pretext}", *FINETUNE]
    argv += ["search.trials=2", "search.seeds=1", "search.epochs=1", "finetune.optimizer=adamw"]
    assert _run(argv) == 0
    assert len(built) == 3  # two trials and a seed run
    assert all(isinstance(optimizer, torch.optim.AdamW) for optimizer in built)
    trials = sorted((tmp_path / "trials").glob("trial-*/config.yaml"))
    assert len(trials) == 2 and all(load_config(str(t)).finetune.optimizer == "adamw" for t in trials)


def test_the_search_problem_names_a_non_default_optimizer_only() -> None:
    from bissl.train.search.storage import search_fingerprint

    assert "optimizer" not in search_fingerprint(load_config(None, TINY))["finetune"]
    adamw = search_fingerprint(load_config(None, [*TINY, "finetune.optimizer=adamw"]))
    assert adamw["finetune"]["optimizer"] == "adamw"


def _legacy_builders(overrides: list[str]) -> dict[str, Any]:
    """Module -> a stand-in for its ``make_optimizer`` that constructs the optimiser directly, as the stage did
    before the optimiser keys existed, from the config values it read then (the factory's other arguments are
    ignored; only the parameters are taken from the call)."""
    config = load_config(None, overrides)
    p, b, w, f = config.pretrain, config.bilevel, config.warmup, config.finetune

    def lars(lr: float, momentum: float, weight_decay: float) -> Any:
        def build(kind: str, named: list[tuple[str, nn.Parameter]], **_: Any) -> torch.optim.Optimizer:
            groups = lars_groups(named, p.lars_exclude_bias_norm)
            return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=p.lars_eta)

        return build

    def sgd(lr: float, momentum: float, weight_decay: float) -> Any:
        def build(kind: str, named: list[tuple[str, nn.Parameter]], **_: Any) -> torch.optim.Optimizer:
            return torch.optim.SGD([q for _, q in named], lr=lr, momentum=momentum, weight_decay=weight_decay)

        return build

    lower = lars(b.lower_lr, b.lower_momentum, b.lower_weight_decay)
    upper = sgd(b.upper_lr, b.upper_momentum, b.upper_weight_decay)
    calls: list[str] = []

    def trainer(kind: str, named: list[tuple[str, nn.Parameter]], **kw: Any) -> torch.optim.Optimizer:
        calls.append(kind)  # the trainer builds the lower optimiser first, then the upper one
        return (lower if len(calls) % 2 == 1 else upper)(kind, named, **kw)

    warmup_lr = w.lr if w.lr is not None else b.upper_lr
    warmup_wd = w.weight_decay if w.weight_decay is not None else b.upper_weight_decay
    return {
        "bissl.train.pretrain": lars(p.lr, p.momentum, p.weight_decay),
        "bissl.train.projector_warmup": lars(
            config.pretext.projector_warmup_lr, b.lower_momentum, b.lower_weight_decay
        ),
        "bissl.bilevel.trainer": trainer,
        "warmup": sgd(warmup_lr, w.momentum, warmup_wd),
        "finetune": sgd(f.lr, f.momentum, f.weight_decay),
    }


def _assert_same_files(left: Path, right: Path) -> None:
    files = sorted(path.relative_to(left) for path in left.rglob("*.pt"))
    assert files and files == sorted(path.relative_to(right) for path in right.rglob("*.pt"))
    for name in files:
        a, b = flat_tensors(left / name), flat_tensors(right / name)
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_the_defaults_give_the_optimisers_the_stages_built_directly_bit_identically(
    tmp_path: Path, pretext: Path, head: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stage with the default config, once through the factory and once with the factory replaced by the
    direct construction of LARS / torch.optim.SGD: every tensor of every checkpoint (weights, momentum
    buffers, the trainer's state) is equal."""
    from bissl.bilevel import trainer
    from bissl.train import classifier, projector_warmup
    from bissl.train import pretrain as pretrain_module

    stages = {
        "pretrain": ["pretrain", *TINY, "pretrain.steps=3", "pretrain.batch_size=16"],
        "warmup": ["warmup", *TINY, f"pretext_checkpoint={pretext}", *WARMUP],
        "bilevel": ["bilevel", *TINY, f"pretext_checkpoint={pretext}", f"head_checkpoint={head}", *BILEVEL],
        "finetune": ["finetune", *TINY, f"backbone={pretext}", *FINETUNE],
    }
    modules = {
        "bissl.train.pretrain": pretrain_module,
        "bissl.train.projector_warmup": projector_warmup,
        "bissl.bilevel.trainer": trainer,
    }
    for stage, argv in stages.items():
        command, overrides = argv[0], argv[1:]
        assert _run([command, "--out", str(tmp_path / stage / "factory"), *overrides]) == 0
        legacy = _legacy_builders(overrides)
        for name, module in modules.items():
            monkeypatch.setattr(module, "make_optimizer", legacy[name])
        if stage in ("warmup", "finetune"):
            monkeypatch.setattr(classifier, "make_optimizer", legacy[stage])
        assert _run([command, "--out", str(tmp_path / stage / "direct"), *overrides]) == 0
        monkeypatch.undo()
        _assert_same_files(tmp_path / stage / "factory", tmp_path / stage / "direct")


@pytest.mark.parametrize(
    ("stage", "key", "kind"),
    [
        ("pretrain", "pretrain.optimizer", "LARS"),
        ("warmup", "warmup.optimizer", "SGD"),
        ("bilevel", "bilevel.lower_optimizer", "LARS"),
        ("bilevel", "bilevel.upper_optimizer", "SGD"),
        ("finetune", "finetune.optimizer", "SGD"),
    ],
)
def test_resuming_under_another_optimizer_is_refused_in_one_line(
    stage: str,
    key: str,
    kind: str,
    tmp_path: Path,
    pretext: Path,
    head: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = {
        "pretrain": [*TINY, *PRETRAIN],
        "warmup": [*TINY, f"pretext_checkpoint={pretext}", *WARMUP],
        "bilevel": [*TINY, f"pretext_checkpoint={pretext}", f"head_checkpoint={head}", *BILEVEL],
        "finetune": [*TINY, f"backbone={pretext}", *FINETUNE],
    }[stage]
    assert _run([stage, "--out", str(tmp_path), *argv]) == 0
    written = (tmp_path / "config.yaml").read_text()
    capsys.readouterr()
    assert _run([stage, "--out", str(tmp_path), "--resume", *argv, f"{key}=adamw"]) == 2
    assert (tmp_path / "config.yaml").read_text() == written
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"holds {kind} optimiser state but this run sets {key}=adamw" in err, err
    assert f"use {key}={kind.lower()}" in err
