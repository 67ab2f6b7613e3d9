"""Building models from a config: the backbone, the pretext task, and the architecture record that must
match for saved weights to load."""

from __future__ import annotations

from typing import Any

from torch import nn

from bissl.config import Config
from bissl.models import VIT_BACKBONES, build_backbone, feature_dim, vit_shape
from bissl.pretext import PretextTask, build_pretext


def architecture(config: Config, channels: int) -> dict[str, Any]:
    """What must match for weights to load: backbone name, input channels, and the ResNets' stem, width and
    blocks or the ViTs' patch size, depth, width, heads, MLP ratio and image size (the position embedding's
    length). The ViT's pool is not recorded: it changes the feature, not the weights."""
    model = config.model
    arch: dict[str, Any] = {"backbone": model.backbone, "in_channels": channels}
    if model.backbone in VIT_BACKBONES:
        depth, width, heads = vit_shape(model.backbone, model.vit_depth, model.vit_width, model.vit_heads)
        arch.update(
            vit_patch_size=model.vit_patch_size,
            vit_depth=depth,
            vit_width=width,
            vit_heads=heads,
            vit_mlp_ratio=model.vit_mlp_ratio,
            image_size=config.data.image_size,
        )
    elif model.backbone == "small_resnet":
        arch.update(width=model.width, blocks=list(model.blocks))
    else:
        arch.update(stem=model.stem)
    return arch


def make_backbone(config: Config, channels: int) -> nn.Module:
    """The configured backbone for images with ``channels`` channels."""
    model = config.model
    return build_backbone(
        model.backbone,
        in_channels=channels,
        stem=model.stem,
        width=model.width,
        blocks=tuple(model.blocks),
        image_size=config.data.image_size,
        vit_patch_size=model.vit_patch_size,
        vit_depth=model.vit_depth,
        vit_width=model.vit_width,
        vit_heads=model.vit_heads,
        vit_mlp_ratio=model.vit_mlp_ratio,
        vit_pool=model.vit_pool,
    )


def make_pretext(config: Config, channels: int) -> PretextTask:
    """A fresh pretext task (backbone + head) for the configured method."""
    backbone = make_backbone(config, channels)
    return build_pretext(config.pretext, backbone, feature_dim(backbone))
