"""A backbone pretrained on grey images fine-tunes on a folder of grey PNGs, end to end through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bissl import cli
from tests.data.test_folder_channels import grey_folder

SIZE = 8
MODEL = ["model.width=4", "model.blocks=[1]", f"data.image_size={SIZE}", "device=cpu"]


def test_grey_pretrained_backbone_fine_tunes_on_a_grey_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = grey_folder(tmp_path / "scans", classes=3, per_class=8)
    pretrain = tmp_path / "pretrain"
    pretext = ["data.pretext=synthetic", "pretext.projector_hidden=[8]", "pretext.projector_dim=8"]
    steps = ["pretrain.steps=3", "pretrain.batch_size=16"]
    assert cli.main(["--quiet", "pretrain", "--out", str(pretrain), *MODEL, *pretext, *steps]) == 0
    backbone = pretrain / "backbone.pt"
    assert json.loads(backbone.with_suffix(".json").read_text())["architecture"]["in_channels"] == 1

    finetune = tmp_path / "finetune"
    settings = [
        f"data.downstream={folder}",
        f"backbone={backbone}",
        "finetune.epochs=2",
        "finetune.batch_size=6",
    ]
    assert cli.main(["--quiet", "finetune", "--out", str(finetune), *MODEL, *settings]) == 0
    summary = json.loads((finetune / "summary.json").read_text())
    assert math.isfinite(summary["last"]["test_top1"]) and summary["last"]["epoch"] == 2
    tuned = torch.load(finetune / "checkpoints" / "last.pt", weights_only=True)["backbone"]
    start = torch.load(backbone, weights_only=True)
    assert tuned["stem.0.weight"].shape[1] == 1
    assert not torch.equal(tuned["stem.0.weight"], start["stem.0.weight"])

    forced = tmp_path / "forced-rgb"
    capsys.readouterr()
    code = cli.main(["--quiet", "finetune", "--out", str(forced), *MODEL, *settings, "data.channels=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "model.in_channels=1 but the data has 3 channels; set data.channels=1" in err
