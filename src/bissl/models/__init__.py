"""Backbones and heads."""

from bissl.models.backbones import BACKBONES, build_backbone, feature_dim
from bissl.models.batchnorm import batch_norm_layers, recompute_batchnorm_statistics
from bissl.models.heads import linear_head, mlp

__all__ = [
    "BACKBONES",
    "batch_norm_layers",
    "build_backbone",
    "feature_dim",
    "linear_head",
    "mlp",
    "recompute_batchnorm_statistics",
]
