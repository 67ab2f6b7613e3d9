"""Pretext tasks behind one interface, built by name."""

from __future__ import annotations

from torch import nn

from bissl.config import PretextConfig
from bissl.pretext.base import PretextTask
from bissl.pretext.byol import BYOL
from bissl.pretext.simclr import SimCLR, nt_xent

PRETEXT_TASKS = ("simclr", "byol")


def build_pretext(config: PretextConfig, backbone: nn.Module, feature_dim: int) -> PretextTask:
    """The configured pretext task around ``backbone``."""
    if config.method == "simclr":
        return SimCLR(
            backbone,
            feature_dim,
            projector_hidden=config.projector_hidden,
            projector_dim=config.projector_dim,
            temperature=config.temperature,
            hidden_bias=config.head_hidden_bias,
            output_bias=config.head_output_bias,
        )
    return BYOL(
        backbone,
        feature_dim,
        projector_hidden=config.projector_hidden,
        projector_dim=config.projector_dim,
        predictor_hidden=config.predictor_hidden,
        ema=config.ema,
        ema_schedule=config.ema_schedule,
        hidden_bias=config.head_hidden_bias,
        output_bias=config.head_output_bias,
    )


__all__ = ["BYOL", "PRETEXT_TASKS", "PretextTask", "SimCLR", "build_pretext", "nt_xent"]
