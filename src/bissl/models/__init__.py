"""Backbones and heads."""

from bissl.models.backbones import (
    BACKBONES,
    VIT_BACKBONES,
    VIT_POOLS,
    VIT_SIZES,
    build_backbone,
    build_vit,
    feature_dim,
    uses_batchnorm,
    vit_shape,
)
from bissl.models.batchnorm import batch_norm_layers, recompute_batchnorm_statistics
from bissl.models.heads import DINOHead, WeightNormLinear, linear_head, mlp

__all__ = [
    "BACKBONES",
    "VIT_BACKBONES",
    "VIT_POOLS",
    "VIT_SIZES",
    "DINOHead",
    "WeightNormLinear",
    "batch_norm_layers",
    "build_backbone",
    "build_vit",
    "feature_dim",
    "linear_head",
    "mlp",
    "recompute_batchnorm_statistics",
    "uses_batchnorm",
    "vit_shape",
]
