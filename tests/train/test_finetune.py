"""Fine-tuning a small ResNet from random initialisation on scikit-learn's digits."""

from __future__ import annotations

from pathlib import Path

from bissl.config import load_config
from bissl.runtime import RunDir
from bissl.train.finetune import run_finetune

# 8x8 digits, a two-stage ResNet of width 16, mild crops: about ten seconds on one thread.
DIGITS = [
    "data.downstream=digits",
    "data.image_size=8",
    "model.backbone=small_resnet",
    "model.width=16",
    "model.blocks=[1,1]",
    "augment.downstream_crop_scale=[0.8,1.0]",
    "finetune.epochs=10",
    "finetune.batch_size=32",
    "finetune.lr=0.05",
    "finetune.weight_decay=5e-4",
    "finetune.eval_every=5",
    "device=cpu",
]


def test_small_resnet_from_scratch_reaches_90_percent_on_digits(tmp_path: Path) -> None:
    config = load_config(None, DIGITS)
    run = RunDir(tmp_path / "finetune", config)
    result = run_finetune(config, run, splits=("val", "test"))

    assert result["primary_metric"] == "top1"
    assert result["last"]["test_top1"] >= 90.0
    assert result["last"]["epoch"] == 10
    # Evaluated at epochs 5 and 10; "best" is the record with the highest validation accuracy.
    assert [record["epoch"] for record in result["history"]] == [5, 10]
    assert result["best"]["val_top1"] == max(record["val_top1"] for record in result["history"])
    assert (tmp_path / "finetune" / "metrics.jsonl").read_text().count('"stage": "finetune"') == 2
