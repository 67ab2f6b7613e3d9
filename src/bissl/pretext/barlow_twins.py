"""Barlow Twins: drive the cross-correlation matrix of two views' standardised embeddings to the identity
(Zbontar et al., ICML 2021).

Under torch.distributed both views' embeddings are gathered from every rank (with gradients), standardised over
the global batch and every rank computes the whole loss, as for VICReg (docs/pretext.md).
"""

from __future__ import annotations

import torch
from torch import nn

from bissl import distributed
from bissl.models import mlp
from bissl.pretext.base import OuterLoss, PretextTask

STANDARDISE_EPS = 1e-5
"""ε of the per-dimension standardisation (the official code's affine-free BatchNorm, PyTorch's default)."""


def _standardise(z: torch.Tensor) -> torch.Tensor:
    """(z − mean) / sqrt(biased variance + ε) per dimension over the batch: BatchNorm1d(affine=False) in
    training mode."""
    mean = z.mean(dim=0)
    variance = (z - mean).pow(2).mean(dim=0)
    return (z - mean) / torch.sqrt(variance + STANDARDISE_EPS)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """C = ẑ1ᵀ ẑ2 / N over the global batch (embeddings of every rank gathered with gradients)."""
    z1 = distributed.gather_with_grad(z1)
    z2 = distributed.gather_with_grad(z2)
    return _standardise(z1).T @ _standardise(z2) / z1.shape[0]


def _redundancy_loss(c: torch.Tensor, redundancy_weight: float) -> torch.Tensor:
    """Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²."""
    diagonal = torch.diagonal(c)
    on_diagonal = (1 - diagonal).pow(2).sum()
    off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
    return on_diagonal + redundancy_weight * off_diagonal


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, redundancy_weight: float) -> torch.Tensor:
    """Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij² with C the cross-correlation of the standardised embeddings over the
    global batch; ``redundancy_weight`` is λ."""
    return _redundancy_loss(cross_correlation(z1, z2), redundancy_weight)


class BarlowTwins(PretextTask):
    """Backbone + MLP projector + the Barlow Twins loss."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector_hidden: list[int] | tuple[int, ...] = (256, 256),
        projector_dim: int = 256,
        redundancy_weight: float = 0.0051,
        hidden_bias: bool = False,
        output_bias: bool = True,
        hidden_bn: bool = True,
        output_bn: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = mlp(
            feature_dim,
            tuple(projector_hidden),
            projector_dim,
            hidden_bias=hidden_bias,
            output_bias=output_bias,
            hidden_bn=hidden_bn,
            last_bn=output_bn,
            last_bn_affine=output_bn,
        )
        self.redundancy_weight = redundancy_weight

    def _embeddings(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # each view in a batch of its own (its BatchNorm statistics), as the official code runs them
        z1, z2 = self.head(self.backbone(view1)), self.head(self.backbone(view2))
        return z1, z2

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(*self._embeddings(view1, view2), self.redundancy_weight)

    def gauss_newton_split(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, OuterLoss]:
        """Split at the cross-correlation matrix C: ℓ(C) = Σ(1 − C_ii)² + λ Σ_{i≠j} C_ij² is a convex
        quadratic whose Hessian is diagonal, 2 on C's diagonal entries and 2λ off it."""
        c = cross_correlation(*self._embeddings(view1, view2))
        weight = self.redundancy_weight
        eye = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)

        def value(outputs: torch.Tensor) -> torch.Tensor:
            return _redundancy_loss(outputs, weight)

        def hvp(u: torch.Tensor) -> torch.Tensor:
            return torch.where(eye, 2.0 * u, (2.0 * weight) * u)

        return c, OuterLoss(value, hvp)
