"""The ViT demo configs (``bissl demo --vit``, ``--vit --quick``): what they hold, and, in a slow test, the quick
variant end to end (DINO pretraining of a tiny ViT, the comparison, results.json with finite numbers)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bissl import cli
from bissl.config import load_config


@pytest.mark.parametrize("name", ["demo-vit", "demo-vit-quick"])
def test_the_vit_demo_configs_train_a_tiny_vit_with_dino_and_adamw(name: str) -> None:
    config = load_config(name)
    model, data = config.model, config.data
    assert (model.backbone, model.vit_patch_size, model.vit_width, model.vit_depth, model.vit_heads) == (
        "vit",
        4,
        32,
        2,
        2,
    )
    assert (data.pretext, data.downstream, data.image_size) == ("fashion-mnist", "digits", 16)
    assert config.pretext.method == "dino" and 256 <= config.pretext.dino_out_dim <= 1024
    assert (config.pretrain.optimizer, config.bilevel.lower_optimizer) == ("adamw", "adamw")
    assert (config.bilevel.upper_optimizer, config.finetune.optimizer) == ("adamw", "adamw")
    assert config.warmup.optimizer is None  # follows the upper level: adamw
    assert config.pretrain.clip_grad == 3.0 and config.pretrain.weight_decay == 0.04
    assert config.search.lr_range[1] <= 2e-2  # AdamW learning rates, not SGD's


def test_the_quick_vit_demo_is_the_full_one_at_smaller_size() -> None:
    full, quick = load_config("demo-vit"), load_config("demo-vit-quick")
    assert quick.model == full.model and quick.pretext == full.pretext and quick.augment == full.augment
    assert (
        quick.pretrain.steps < full.pretrain.steps and quick.bilevel.alternations < full.bilevel.alternations
    )
    assert quick.search.trials < full.search.trials and quick.finetune.epochs < full.finetune.epochs


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return []


@pytest.mark.slow
def test_the_quick_vit_demo_finishes_and_writes_finite_results(tmp_path: Path) -> None:
    out = tmp_path / "demo-vit-quick"
    assert cli.main(["--quiet", "demo", "--vit", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"]["backbone"] == "vit"
    assert set(results["arms"]) == {"baseline", "bissl"}
    for arm in results["arms"].values():
        top1 = arm["summary"]["test_top1"]
        assert top1["n"] == 2 and all(math.isfinite(v) and 0 <= v <= 100 for v in top1["values"])
    difference = results["comparison"]["test_top1"]
    assert math.isfinite(difference["mean_difference"])
    for probe in results["probes"].values():
        assert math.isfinite(probe["knn_top1"]) and math.isfinite(probe["probe_top1"])
    pretrain = json.loads((out / "pretrain" / "summary.json").read_text())
    assert math.isfinite(pretrain["final_loss"]) and math.isfinite(pretrain["knn_top1"])
    assert all(math.isfinite(n) for n in _numbers(results["arms"]))
