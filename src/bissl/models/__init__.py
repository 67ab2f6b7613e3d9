"""Backbones and heads."""

from bissl.models.backbones import BACKBONES, build_backbone, feature_dim
from bissl.models.heads import linear_head, mlp

__all__ = ["BACKBONES", "build_backbone", "feature_dim", "linear_head", "mlp"]
