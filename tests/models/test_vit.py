"""Vision Transformer backbones: timm's module with timm's key names, the standard named sizes, both pools,
input channels from the data, config checks that stop in one line, and the BatchNorm machinery (running
statistics, their refresh, SyncBatchNorm, the study's BatchNorm control) doing nothing on a backbone without
BatchNorm."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import get_args

import pytest
import timm
import torch
from torch import nn

from bissl import cli, distributed
from bissl.bilevel.hvp import frozen_bn_stats, untracked_bn_stats
from bissl.checkpoint import check_architecture, make_meta
from bissl.config import Config, ModelConfig, StudyArm, config_from_dict, load_config
from bissl.config.schema import field_types
from bissl.errors import CheckpointError, ConfigError
from bissl.models import (
    BACKBONES,
    VIT_BACKBONES,
    batch_norm_layers,
    build_backbone,
    feature_dim,
    recompute_batchnorm_statistics,
    uses_batchnorm,
)
from bissl.parts import Parts
from bissl.runtime import GracefulStop
from bissl.study import BN_CONTROL, walk_parts
from bissl.train.model_factory import architecture, make_backbone
from tests.cli_run import run_cli

TINY = {"vit_patch_size": 4, "vit_width": 8, "vit_heads": 2, "vit_depth": 2}


def _tiny(channels: int = 1, pool: str = "cls", size: int = 8) -> nn.Module:
    return build_backbone("vit", in_channels=channels, image_size=size, vit_pool=pool, **TINY)  # type: ignore[arg-type]


def test_backbone_names_include_the_vits_and_match_the_config() -> None:
    assert set(VIT_BACKBONES) == {"vit", "vit_tiny", "vit_small", "vit_base"} <= set(BACKBONES)
    assert get_args(field_types(ModelConfig)["backbone"]) == BACKBONES


@pytest.mark.parametrize(
    ("name", "depth", "width", "heads", "parameters"),
    [
        ("vit_tiny", 12, 192, 3, 5_524_416),
        ("vit_small", 12, 384, 6, 21_665_664),
        ("vit_base", 12, 768, 12, 85_798_656),
    ],
)
def test_named_sizes_have_the_standard_shapes(
    name: str, depth: int, width: int, heads: int, parameters: int
) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        backbone = build_backbone(name, image_size=224, vit_patch_size=16, vit_width=64, vit_heads=2)
    assert feature_dim(backbone) == width
    blocks = backbone.blocks
    assert isinstance(blocks, nn.Sequential) and len(blocks) == depth
    assert blocks[0].attn.num_heads == heads  # the named size wins over vit_width / vit_heads
    assert sum(p.numel() for p in backbone.parameters()) == parameters  # timm's ViT-Ti/S/B-16, no classifier


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_features_have_the_width_and_follow_the_pool(channels: int, pool: str) -> None:
    torch.manual_seed(0)
    backbone = _tiny(channels, pool).eval()
    images = torch.randn(3, channels, 8, 8)
    with torch.no_grad():
        features = backbone(images)
        tokens = backbone.forward_features(images)  # type: ignore[operator]
    assert features.shape == (3, 8) and feature_dim(backbone) == 8
    assert tokens.shape == (3, 1 + 4, 8)  # CLS + (8/4)^2 patches, after the final norm
    expected = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(1)
    torch.testing.assert_close(features, expected)


def test_state_dict_has_timm_key_names_for_both_pools() -> None:
    keys = list(_tiny().state_dict())
    assert keys[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "norm.weight", "norm.bias"} <= set(keys)
    assert not [k for k in keys if k.startswith(("head", "fc_norm", "backbone.", "module."))]
    assert list(_tiny(pool="mean").state_dict()) == keys


def test_weights_load_strictly_into_timms_own_model_and_give_its_features() -> None:
    torch.manual_seed(0)
    ours = build_backbone("vit_tiny", in_channels=3, image_size=32, vit_patch_size=16).eval()
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images))


def test_every_attention_layer_uses_scaled_dot_product_attention_whatever_timms_default() -> None:
    from timm.layers import set_fused_attn, use_fused_attn

    was = use_fused_attn()
    set_fused_attn(False)
    try:
        backbone = _tiny()
    finally:
        set_fused_attn(was)
    layers = [m for m in backbone.modules() if hasattr(m, "fused_attn")]
    assert len(layers) == 2 and all(m.fused_attn for m in layers)


def test_builder_refuses_shapes_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="not divisible by its 3 heads"):
        build_backbone("vit", image_size=8, vit_patch_size=4, vit_width=8, vit_heads=3)
    with pytest.raises(ValueError, match="image size 10 is not divisible by the ViT patch size 4"):
        build_backbone("vit", image_size=10, vit_patch_size=4, vit_width=8, vit_heads=2)
    with pytest.raises(ValueError, match=r"model\.vit_pool='max'"):
        build_backbone("vit", image_size=8, vit_patch_size=4, vit_width=8, vit_heads=2, vit_pool="max")
    with pytest.raises(ValueError, match="needs the image size"):
        build_backbone("vit_tiny")


def _config(**model: object) -> Config:
    data = {"image_size": model.pop("image_size", 8)}
    return config_from_dict({"data": data, "model": {"backbone": "vit", **TINY, **model}})


def test_config_builds_the_configured_vit_with_the_datas_channels() -> None:
    config = _config(vit_mlp_ratio=2.0, vit_pool="mean")
    backbone = make_backbone(config, channels=3)
    assert backbone.patch_embed.proj.weight.shape == (8, 3, 4, 4)  # type: ignore[union-attr]
    assert backbone.blocks[0].mlp.fc1.out_features == 16  # type: ignore[index]
    assert architecture(config, 3) == {
        "backbone": "vit",
        "in_channels": 3,
        "vit_patch_size": 4,
        "vit_depth": 2,
        "vit_width": 8,
        "vit_heads": 2,
        "vit_mlp_ratio": 2.0,
        "image_size": 8,
    }
    named = architecture(_config(backbone="vit_small", image_size=32), 1)
    assert (named["vit_depth"], named["vit_width"], named["vit_heads"]) == (12, 384, 6)


def test_a_checkpoint_at_another_image_size_is_refused_naming_the_data_key() -> None:
    saved = {"meta": make_meta("pretrain", architecture(_config(image_size=16), 1))}
    with pytest.raises(CheckpointError, match=r"has data.image_size=16 but the config says 8"):
        check_architecture(saved, architecture(_config(), 1), "pretext.pt")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.vit_width=10", "model.vit_heads=4"],
            "config key 'model.vit_width' (10) must be a multiple of model.vit_heads (4)",
        ),
        (
            ["data.image_size=28", "model.vit_patch_size=16"],
            "config key 'data.image_size' (28) must be a multiple of model.vit_patch_size (16) "
            "with model.backbone=vit",
        ),
    ],
)
def test_config_errors_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["model.backbone=vit", *overrides])
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_named_sizes_ignore_vit_width_but_check_the_patch(capsys: pytest.CaptureFixture[str]) -> None:
    load_config(
        None, ["model.backbone=vit_small", "model.vit_width=10", "model.vit_heads=4", "data.image_size=32"]
    )
    code, err = run_cli(
        [
            "config",
            "show",
            "model",
            "model.backbone=vit_tiny",
            "data.image_size=30",
            "model.vit_patch_size=4",
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 0 and "'data.image_size' (30)" in err


def test_config_show_lists_the_vit_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show", "model"]) == 0
    shown = capsys.readouterr().out
    for key in ("vit_patch_size", "vit_depth", "vit_width", "vit_heads", "vit_mlp_ratio", "vit_pool"):
        assert f"model.{key}" in shown
    assert "vit_tiny" in shown


def test_batchnorm_machinery_is_a_no_op_on_a_vit() -> None:
    backbone = _tiny().train()
    assert not uses_batchnorm("vit_base") and uses_batchnorm("resnet18")
    assert batch_norm_layers(backbone) == []
    before = copy.deepcopy(backbone.state_dict())

    def never() -> list[torch.Tensor]:
        raise AssertionError("a backbone without BatchNorm is not run")

    assert recompute_batchnorm_statistics(backbone, (never() for _ in range(1))) == 0
    modules = list(backbone.modules())
    assert distributed.convert_sync_batchnorm(backbone) is backbone
    assert list(backbone.modules()) == modules
    images = torch.randn(2, 1, 8, 8)
    with frozen_bn_stats(backbone), untracked_bn_stats(backbone):
        out = backbone(images)
    torch.testing.assert_close(out, backbone(images))
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())


def _study(backbone: str) -> Config:
    config = load_config(None, [f"model.backbone={backbone}", "model.vit_patch_size=4", "data.image_size=8"])
    arms = [StudyArm(name="baseline"), StudyArm(name="bissl", bilevel=True)]
    return dataclasses.replace(config, study=dataclasses.replace(config.study, arms=arms, pipeline_seeds=[1]))


@pytest.mark.parametrize(("backbone", "controlled"), [("small_resnet", True), ("vit", False)])
def test_the_study_runs_its_batchnorm_control_only_for_a_backbone_with_batchnorm(
    tmp_path: Path, backbone: str, controlled: bool
) -> None:
    parts = Parts(tmp_path / "study", GracefulStop(), "study", dry=True)
    walk_parts(parts, _study(backbone))
    names = [name for name, _ in parts.rows]
    assert any(name.startswith("baseline/") for name in names)
    assert any(name.startswith(f"{BN_CONTROL}/") for name in names) is controlled
    assert not (tmp_path / "study").exists()
