"""Pretext tasks behind one interface, built by name."""

from __future__ import annotations

from torch import nn

from bissl.config import PretextConfig
from bissl.pretext.barlow_twins import BarlowTwins, barlow_twins_loss
from bissl.pretext.base import PretextTask
from bissl.pretext.byol import BYOL
from bissl.pretext.dino import DINO, dino_loss
from bissl.pretext.mocov3 import MoCoV3, mocov3_loss
from bissl.pretext.simclr import SimCLR, nt_xent
from bissl.pretext.vicreg import VICReg, vicreg_loss

PRETEXT_TASKS = ("simclr", "byol", "vicreg", "barlow_twins", "mocov3", "dino")


def build_pretext(config: PretextConfig, backbone: nn.Module, feature_dim: int) -> PretextTask:
    """The configured pretext task around ``backbone``."""
    hidden, dim = config.projector_hidden, config.projector_dim
    hidden_bias, output_bias = config.head_hidden_bias, config.head_output_bias
    hidden_bn = config.head_hidden_bn
    if config.method == "simclr":
        return SimCLR(
            backbone,
            feature_dim,
            projector_hidden=hidden,
            projector_dim=dim,
            temperature=config.temperature,
            hidden_bias=hidden_bias,
            output_bias=output_bias,
            hidden_bn=hidden_bn,
            output_bn=config.head_output_bn,
        )
    if config.method == "byol":
        return BYOL(
            backbone,
            feature_dim,
            projector_hidden=hidden,
            projector_dim=dim,
            predictor_hidden=config.predictor_hidden,
            ema=config.ema,
            ema_schedule=config.ema_schedule,
            hidden_bias=hidden_bias,
            output_bias=output_bias,
            hidden_bn=hidden_bn,
            output_bn=config.head_output_bn,
        )
    if config.method == "vicreg":
        return VICReg(
            backbone,
            feature_dim,
            projector_hidden=hidden,
            projector_dim=dim,
            invariance=config.vicreg_invariance,
            variance=config.vicreg_variance,
            covariance=config.vicreg_covariance,
            hidden_bias=hidden_bias,
            output_bias=output_bias,
            hidden_bn=hidden_bn,
            output_bn=config.head_output_bn,
        )
    if config.method == "barlow_twins":
        return BarlowTwins(
            backbone,
            feature_dim,
            projector_hidden=hidden,
            projector_dim=dim,
            redundancy_weight=config.barlow_lambda,
            hidden_bias=hidden_bias,
            output_bias=output_bias,
            hidden_bn=hidden_bn,
            output_bn=config.head_output_bn,
        )
    if config.method == "mocov3":
        return MoCoV3(
            backbone,
            feature_dim,
            projector_hidden=hidden,
            projector_dim=dim,
            predictor_hidden=config.predictor_hidden,
            temperature=config.moco_temperature,
            momentum=config.moco_momentum,
            momentum_schedule=config.moco_momentum_schedule,
            hidden_bias=hidden_bias,
            output_bias=output_bias,
            hidden_bn=hidden_bn,
            output_bn=config.head_output_bn,
        )
    if config.method == "dino":
        return DINO(
            backbone,
            feature_dim,
            projector_hidden=hidden,
            projector_dim=dim,
            out_dim=config.dino_out_dim,
            norm_last_layer=config.dino_norm_last_layer,
            student_temperature=config.dino_student_temperature,
            teacher_temperature=config.dino_teacher_temperature,
            warmup_teacher_temperature=config.dino_warmup_teacher_temperature,
            warmup_fraction=config.dino_warmup_fraction,
            center_momentum=config.dino_center_momentum,
            momentum=config.dino_momentum,
        )
    raise ValueError(f"unknown pretext method {config.method!r}; one of {', '.join(PRETEXT_TASKS)}")


__all__ = [
    "BYOL",
    "DINO",
    "PRETEXT_TASKS",
    "BarlowTwins",
    "MoCoV3",
    "PretextTask",
    "SimCLR",
    "VICReg",
    "barlow_twins_loss",
    "build_pretext",
    "dino_loss",
    "mocov3_loss",
    "nt_xent",
    "vicreg_loss",
]
