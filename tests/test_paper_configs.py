"""The paper configurations: the published values they hold (the ResNet configs of the paper, and BiSSL with the
same bilevel knobs from an imported DINO ViT-S/16), the precision plumbing they switch on (bf16 autocast of the
forward passes, HVPs at their own precision, channels_last), and, in a slow test, every stage of every paper
config for two steps on synthetic 96 px stand-in data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bissl.bilevel.trainer import BilevelTrainer, initial_models
from bissl.cli import main
from bissl.config import BilevelConfig, load_config
from bissl.data.augment import DownstreamAugment
from bissl.data.embedded import synthetic_dataset
from bissl.downstream import DownstreamTask
from bissl.errors import ConfigError
from bissl.precision import autocast, channels_last
from bissl.pretext import SimCLR
from bissl.train import pretrain as pretrain_module
from bissl.train.classifier import ClassifierSettings, fit_classifier

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = {
    "paper-v1-resnet18-stl10.yaml": {
        "backbone": "resnet18",
        "method": "simclr",
        "pretext": "stl10-unlabeled",
        "gamma": 0.01,
        "fairness": "extra-pretext",
        "upper": (0.03, 1e-3),
        "lower_warmup_steps": 980,
    },
    "paper-v4-resnet50-imagenet-simclr.yaml": {
        "backbone": "resnet50",
        "method": "simclr",
        "pretext": "imagenet",
        "gamma": 1.0,
        "fairness": "same-checkpoint",
        "upper": (0.03, 1e-3),
        "lower_warmup_steps": 200,
    },
    "paper-v4-resnet50-imagenet-byol.yaml": {
        "backbone": "resnet50",
        "method": "byol",
        "pretext": "imagenet",
        "gamma": 1.0,
        "fairness": "same-checkpoint",
        "upper": (0.02, 2e-3),
        "lower_warmup_steps": 200,
    },
    "paper-dino-vits16-imagenet.yaml": {
        "backbone": "vit_small",
        "method": "dino",
        "pretext": "imagenet",
        "gamma": 1.0,
        "fairness": "same-checkpoint",
        "upper": (0.03, 1e-3),
        "lower_warmup_steps": 200,
        "image_size": 224,
        "imported": "dino",  # starts from `bissl import`: no pretraining settings of its own
    },
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_hold_the_published_settings(name: str) -> None:
    expected = PAPER[name]
    config = load_config(CONFIGS / name)
    vit = expected["backbone"] == "vit_small"
    assert config.model.backbone == expected["backbone"]
    if vit:  # DINO's ViT-S/16 with its CLS feature; its one convolution gains nothing from NHWC
        assert (config.model.vit_patch_size, config.model.vit_pool, config.channels_last) == (
            16,
            "cls",
            False,
        )
    else:
        assert config.model.stem == "imagenet" and config.channels_last
    assert (config.data.pretext, config.data.downstream, config.data.image_size) == (
        expected["pretext"],
        "oxford-pets",
        expected.get("image_size", 96),
    )
    assert (config.precision, config.hvp_precision) == ("bf16", "fp32")
    pretext = config.pretext
    assert pretext.method == expected["method"]
    if pretext.method == "dino":  # the DINO release's head: 384-2048-2048-256, 65,536 prototypes
        assert (pretext.projector_hidden, pretext.projector_dim, pretext.dino_out_dim) == (
            [2048, 2048],
            256,
            65536,
        )
        assert (pretext.dino_student_temperature, pretext.dino_teacher_temperature) == (0.1, 0.07)
        assert (pretext.dino_norm_last_layer, pretext.dino_warmup_fraction, pretext.dino_momentum) == (
            False,
            0.0,
            0.996,
        )
    else:
        assert pretext.temperature == 0.5
        assert (pretext.projector_hidden, pretext.projector_dim) == ([256, 256], 256)
        assert (pretext.head_hidden_bias, pretext.head_output_bias) == (
            True,
            False,
        )  # the authors' MLPProjector
    if pretext.method == "byol":
        assert (pretext.ema, pretext.ema_schedule, pretext.predictor_hidden) == (
            0.9995,
            "constant",
            [256, 256],
        )
    assert config.augment.reference_crop
    assert config.imported.layout == expected.get("imported")
    if "imported" not in expected:
        p = config.pretrain
        assert (p.epochs, p.batch_size, p.lr, p.weight_decay, p.warmup_epochs) == (500, 1024, 4.8, 1e-6, 10.0)
        assert (p.momentum, p.final_lr_ratio, p.lars_eta) == (0.9, 0.001, 0.001)
        assert (
            p.lars_exclude_bias_norm is False
        )  # the reference's LARS: weight decay and trust ratio on every parameter
    b = config.bilevel
    assert (b.alternations, b.lower_steps, b.upper_steps) == (500, 20, 8)
    assert (b.lam, b.damping, b.gamma) == (1e-3, 10.0, expected["gamma"])
    assert (b.solver, b.solver_iterations, b.layerwise) == ("cg", 5, True)
    assert (b.lower_batch_size, b.upper_batch_size, b.lower_lr, b.clip_grad) == (1024, 256, 1.0, 10.0)
    assert (b.upper_lr, b.upper_weight_decay) == expected["upper"]
    assert b.lower_lars_exclude_bias_norm is False
    assert (b.lower_weight_decay, b.lower_momentum, b.lower_final_lr_ratio) == (1e-6, 0.9, 0.001)
    assert (b.lower_warmup_steps, b.upper_momentum, b.upper_final_lr_ratio) == (
        expected["lower_warmup_steps"],
        0.9,
        0.001,
    )
    assert (config.warmup.epochs, config.finetune.epochs, config.finetune.batch_size) == (20, 400, 256)
    assert config.finetune.final_lr_ratio == 0.001
    assert (config.search.trials, config.search.seeds, config.search.sampler) == (200, 10, "random")
    assert (config.search.lr_range, config.search.weight_decay_range) == ([1e-4, 1.0], [1e-5, 1e-2])
    assert config.compare.fairness == expected["fairness"]


# ---------------------------------------------------------------------------------------------------------
# Precision and memory layout


def test_autocast_follows_the_precision_asked_for() -> None:
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu"):
        assert (a @ b).dtype == torch.float32
    with autocast(load_config(None, ["device=cpu", "precision=bf16"])):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(load_config(None, ["device=cpu", "precision=bf16"]), "fp32"):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16"):
        autocast("cpu", "fp16")


def test_channels_last_converts_modules_and_image_batches() -> None:
    conv = nn.Conv2d(3, 4, 3)
    assert channels_last(conv, enabled=False, on_cpu=True) is conv and conv.weight.is_contiguous()
    assert channels_last(conv) is conv and conv.weight.is_contiguous()  # the CPU keeps its layout
    assert channels_last(conv, on_cpu=True) is conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    images = torch.randn(2, 3, 5, 5)
    assert channels_last(images) is images
    assert channels_last(images, on_cpu=True).is_contiguous(memory_format=torch.channels_last)
    flat = torch.randn(2, 3)
    assert channels_last(flat, on_cpu=True) is flat


class _Backbone(nn.Module):
    """conv-BN-ReLU-pool-linear on 1x4x4 images, recording (batch size, autocast on) at every forward."""

    def __init__(self, calls: list[tuple[int, bool]]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(12, 4)
        self.feature_dim = 4
        self.calls = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((int(x.shape[0]), torch.is_autocast_enabled("cpu")))
        x = F.avg_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("hvp_precision", ["fp32", "bf16"])
def test_bilevel_passes_run_at_their_precision(hvp_precision: str) -> None:
    """Lower steps and downstream passes at ``precision``, the HVPs' pretext loss at ``hvp_precision``;
    batch sizes tell the passes apart (lower 6, Hessian 4, downstream 5)."""
    calls: list[tuple[int, bool]] = []
    lower = SimCLR(_Backbone(calls), 4, projector_hidden=(5,), projector_dim=3, temperature=0.5)
    upper_backbone = initial_models(lower, None)
    head = nn.Linear(4, 3)
    generator = torch.Generator().manual_seed(0)

    def views(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(size, 1, 4, 4, generator=generator)
        return images, images + 0.3 * torch.randn(size, 1, 4, 4, generator=generator)

    settings = BilevelConfig(
        alternations=1,
        lower_steps=2,
        upper_steps=2,
        solver_iterations=2,
        lower_warmup_steps=1,
        lower_batch_size=6,
    )
    trainer = BilevelTrainer(
        lower,
        upper_backbone,
        head,
        F.cross_entropy,
        lambda: views(6),
        lambda: (
            torch.randn(5, 1, 4, 4, generator=generator),
            torch.randint(0, 3, (5,), generator=generator),
        ),
        settings,
        hessian_batches=lambda: views(4),
        precision="bf16",
        hvp_precision=hvp_precision,
    )
    calls.clear()
    record = trainer.alternate()
    assert math.isfinite(record["lower_loss"]) and math.isfinite(record["upper_loss_lower"])
    seen = set(calls)
    assert (12, True) in seen and (5, True) in seen  # two views of 6 go through the backbone at once
    assert (8, hvp_precision == "bf16") in seen and (8, hvp_precision != "bf16") not in seen
    assert (12, False) not in seen and (5, False) not in seen
    assert all(p.dtype == torch.float32 for p in lower.parameters())


def test_fit_classifier_forward_runs_at_the_settings_precision() -> None:
    calls: list[tuple[int, bool]] = []
    data = synthetic_dataset(16, 3, 1, 4, seed=0)
    augment = DownstreamAugment(4, 1, data.mean, data.std, crop_scale=(0.5, 1.0))
    task = DownstreamTask(num_classes=3, multilabel=False)
    backbone, head = _Backbone(calls), nn.Linear(4, 3)
    for precision in ("bf16", "fp32"):
        calls.clear()
        settings = ClassifierSettings(
            stage="finetune", epochs=1, batch_size=8, lr=0.01, weight_decay=0.0, precision=precision
        )
        result = fit_classifier(
            backbone, head, {"train": data, "val": data}, augment, task, settings, None, torch.device("cpu")
        )
        training = [on for size, on in calls if size == 8]
        assert training == [precision == "bf16"] * 2 and math.isfinite(result["last"]["train_loss"])


def test_pretraining_forward_uses_the_configured_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str]] = []

    def recording(target: Any, precision: str | None = None) -> nullcontext[None]:
        asked.append((str(target), str(precision)))
        return nullcontext()

    monkeypatch.setattr(pretrain_module, "autocast", recording)
    overrides = [
        "device=cpu",
        "precision=bf16",
        "channels_last=true",
        "data.pretext=synthetic",
        "data.downstream=synthetic",
        "data.image_size=8",
        "model.width=4",
        "pretrain.steps=2",
        "pretrain.batch_size=16",
    ]
    assert main(["--quiet", "pretrain", "--out", str(tmp_path / "run"), *overrides]) == 0
    assert asked == [("cpu", "bf16"), ("cpu", "bf16")]


def test_gpu_check_without_cuda_says_so_and_exits_0() -> None:
    script = CONFIGS.parent / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no CUDA" in done.stdout


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part_on_the_cpu(tmp_path: Path) -> None:
    script = CONFIGS.parent / "benchmarks" / "gpu_check.py"
    env = {**os.environ, "PYTHONPATH": str(CONFIGS.parent / "src")}
    command = [sys.executable, str(script), "--smoke", "--json", str(tmp_path / "out.json")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "out.json").read_text())
    assert all(row["ok"] for row in results["hvp_checks"])
    assert len(results["throughput"]) == 4 and len(results["upper_phase"]) == 6
    assert results["upper_phase"][0]["backbone"] == "vit/4 16px dino"  # the ViT-S/16 phase at toy size


# ---------------------------------------------------------------------------------------------------------
# Every stage of every paper config, two steps each, on synthetic colour images at 96 px

STAND_INS = [
    "device=cpu",
    "precision=fp32",  # bf16 autocast on a CPU without bf16 units is ~15x slower; the GPU runs bf16
    "data.pretext=synthetic-rgb",
    "data.downstream=synthetic-rgb",
    "data.image_size=96",
    "data.download=false",
    "data.num_workers=0",
    "data.pretext_limit=32",
    "data.downstream_limit=80",
    "pretrain.steps=2",
    "pretrain.batch_size=8",
    "pretrain.log_every=1",
    "warmup.epochs=1",
    "warmup.batch_size=32",
    "bilevel.alternations=1",
    "bilevel.lower_steps=2",
    "bilevel.upper_steps=2",
    "bilevel.lower_batch_size=8",
    "bilevel.hessian_batch_size=4",
    "bilevel.upper_batch_size=16",
    "bilevel.solver_iterations=2",
    "bilevel.lower_warmup_steps=1",
    "bilevel.eval_every=1",
    "finetune.epochs=1",
    "finetune.batch_size=32",
    "search.trials=1",
    "search.seeds=1",
    "search.epochs=1",
    "eval.probe_epochs=2",
    "eval.tsne_samples=16",
    "eval.batch_size=64",
]


def _summary(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "summary.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_stage_of_the_paper_config_runs_on_stand_ins(name: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    config = str(CONFIGS / name)

    def stage(command: str, *extra: str) -> dict[str, Any]:
        out = tmp_path / command
        assert main(["--quiet", command, "--config", config, "--out", str(out), *STAND_INS, *extra]) == 0
        return _summary(out)

    pretrained = stage("pretrain")
    assert pretrained["steps"] == 2 and math.isfinite(pretrained["final_loss"])
    pretext = tmp_path / "pretrain" / "checkpoints" / "pretext.pt"
    warmed = stage("warmup", f"pretext_checkpoint={pretext}")
    bilevel = stage(
        "bilevel", f"pretext_checkpoint={pretext}", f"head_checkpoint={warmed['head_checkpoint']}"
    )
    assert bilevel["alternations"] == 1 and math.isfinite(bilevel["last"]["upper_loss_lower"])
    lower = bilevel["lower_backbone"]
    tuned = stage("finetune", f"backbone={lower}")
    assert "test_top1" in tuned["last"]
    searched = stage("search", f"backbone={lower}")
    assert len(searched["seeds"]) == 1
    evaluated = stage("evaluate", f"backbone={lower}")
    assert math.isfinite(evaluated["knn_top1"]) and math.isfinite(evaluated["probe_top1"])
    print(f"{name}: every stage in {time.perf_counter() - started:.0f} s")


def test_the_bilevel_lower_level_follows_its_own_lars_group_knob() -> None:
    """bilevel.lower_lars_exclude_bias_norm decides the lower LARS groups; unset, pretraining's knob does."""
    from bissl.train.projector_warmup import lower_exclude_bias_norm

    assert lower_exclude_bias_norm(load_config(None, [])) is True
    assert lower_exclude_bias_norm(load_config(None, ["pretrain.lars_exclude_bias_norm=false"])) is False
    both = ["pretrain.lars_exclude_bias_norm=false", "bilevel.lower_lars_exclude_bias_norm=true"]
    assert lower_exclude_bias_norm(load_config(None, both)) is True
    lower = SimCLR(
        nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), 4, projector_hidden=(4,), projector_dim=2
    )
    settings = BilevelConfig(alternations=1, lower_steps=1, upper_steps=1)
    for exclude, groups in ((True, 2), (False, 1)):
        trainer = BilevelTrainer(
            lower,
            initial_models(lower, None),
            nn.Linear(4, 2),
            F.cross_entropy,
            lambda: (torch.zeros(2, 4), torch.zeros(2, 4)),
            lambda: (torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)),
            settings,
            lars_exclude_bias_norm=exclude,
        )
        assert len(trainer.lower_optimizer.param_groups) == groups
        assert all(g["lars"] and g["weight_decay"] == 1e-6 for g in trainer.lower_optimizer.param_groups[:1])


def test_solver_iterations_below_one_is_refused_for_iterative_solvers() -> None:
    for solver in ("cg", "neumann"):
        with pytest.raises(ConfigError, match=r"'bilevel\.solver_iterations' must be >= 1"):
            load_config(None, [f"bilevel.solver={solver}", "bilevel.solver_iterations=0"])
    assert (
        load_config(
            None, ["bilevel.solver=identity", "bilevel.solver_iterations=0"]
        ).bilevel.solver_iterations
        == 0
    )


def test_fine_tuning_cosine_ends_at_its_final_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    from bissl.train import classifier

    seen: list[float] = []
    monkeypatch.setattr(classifier, "set_lr", lambda optimizer, lr: seen.append(lr))
    data = synthetic_dataset(16, 3, 1, 4, seed=0)
    augment = DownstreamAugment(4, 1, data.mean, data.std, crop_scale=(0.5, 1.0))
    task = DownstreamTask(num_classes=3, multilabel=False)
    for ratio in (0.0, 0.001):
        seen.clear()
        settings = ClassifierSettings(
            stage="finetune", epochs=3, batch_size=8, lr=0.1, weight_decay=0.0, final_lr_ratio=ratio
        )
        fit_classifier(
            _Backbone([]),
            nn.Linear(4, 3),
            {"train": data, "val": data},
            augment,
            task,
            settings,
            None,
            torch.device("cpu"),
        )
        assert len(seen) == 6 and seen[0] == 0.1
        expected_last = 0.1 * ratio + (0.1 - 0.1 * ratio) * 0.5 * (1 + math.cos(math.pi * 5 / 6))
        assert seen[-1] == pytest.approx(expected_last)
        assert min(seen) > 0.1 * ratio or ratio == 0.0


def test_the_fine_tuning_end_ratio_is_part_of_the_search_problem() -> None:
    from bissl.train.search import study_name_for

    default = load_config(None, [])
    assert study_name_for(load_config(None, ["finetune.final_lr_ratio=0"])) == study_name_for(default)
    assert study_name_for(load_config(None, ["finetune.final_lr_ratio=0.001"])) != study_name_for(default)
