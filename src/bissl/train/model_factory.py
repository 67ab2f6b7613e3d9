"""Building models from a config: the backbone, the pretext task, and the architecture record that must
match for saved weights to load."""

from __future__ import annotations

from typing import Any

from torch import nn

from bissl.config import Config
from bissl.models import build_backbone, feature_dim
from bissl.pretext import PretextTask, build_pretext


def architecture(config: Config, channels: int) -> dict[str, Any]:
    """What must match for weights to load: backbone name, stem, width, blocks, input channels."""
    model = config.model
    arch: dict[str, Any] = {"backbone": model.backbone, "in_channels": channels}
    if model.backbone == "small_resnet":
        arch.update(width=model.width, blocks=list(model.blocks))
    else:
        arch.update(stem=model.stem)
    return arch


def make_backbone(config: Config, channels: int) -> nn.Module:
    """The configured backbone for images with ``channels`` channels."""
    model = config.model
    return build_backbone(
        model.backbone, in_channels=channels, stem=model.stem, width=model.width, blocks=tuple(model.blocks)
    )


def make_pretext(config: Config, channels: int) -> PretextTask:
    """A fresh pretext task (backbone + head) for the configured method."""
    backbone = make_backbone(config, channels)
    return build_pretext(config.pretext, backbone, feature_dim(backbone))
