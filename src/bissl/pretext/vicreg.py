"""VICReg: variance-invariance-covariance regularisation of two views' embeddings (Bardes et al., ICLR 2022).

Under torch.distributed both views' embeddings are gathered from every rank (with gradients) and every rank
computes the whole loss on the global batch; the reduce-scatter backward of the gather and DDP's averaging
then give each parameter the gradient of the single-process loss (docs/pretext.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bissl import distributed
from bissl.models import mlp
from bissl.pretext.base import OuterLoss, PretextTask

VARIANCE_TARGET = 1.0
"""γ: the standard deviation each embedding dimension is pushed up to (the paper's fixed constant)."""
VARIANCE_EPS = 1e-4
"""ε inside the square root of the variance term (the paper's fixed constant)."""


def _variance_term(z: torch.Tensor) -> torch.Tensor:
    """mean over dimensions of relu(γ − sqrt(Var(z_j) + ε)), with the unbiased variance over the batch."""
    std = torch.sqrt(z.var(dim=0) + VARIANCE_EPS)
    return F.relu(VARIANCE_TARGET - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Σ_{i≠j} Cov(z)_ij² / d with Cov = (z − mean)ᵀ(z − mean) / (N − 1)."""
    rows, dim = z.shape
    centred = z - z.mean(dim=0)
    covariance = centred.T @ centred / (rows - 1)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    return off_diagonal.pow(2).sum() / dim


def vicreg_loss(
    z1: torch.Tensor, z2: torch.Tensor, invariance: float, variance: float, covariance: float
) -> torch.Tensor:
    """λ·MSE(z1, z2) + μ·(v(z1) + v(z2))/2 + ν·(c(z1) + c(z2)) over the global batch.

    v is the hinge on each dimension's standard deviation (``_variance_term``), c the off-diagonal squared
    covariance over the dimension (``_covariance_term``); ``invariance``, ``variance``, ``covariance`` are λ, μ, ν.
    In a distributed run the embeddings of every rank are gathered first (with gradients), so every rank
    returns the loss of the whole batch.
    """
    z1 = distributed.gather_with_grad(z1)
    z2 = distributed.gather_with_grad(z2)
    invariance_term = F.mse_loss(z1, z2)
    variance_term = (_variance_term(z1) + _variance_term(z2)) / 2
    covariance_term = _covariance_term(z1) + _covariance_term(z2)
    return invariance * invariance_term + variance * variance_term + covariance * covariance_term


class VICReg(PretextTask):
    """Backbone + MLP projector (the expander) + the VICReg loss; no Gauss–Newton split (docs/pretext.md)."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector_hidden: list[int] | tuple[int, ...] = (256, 256),
        projector_dim: int = 256,
        invariance: float = 25.0,
        variance: float = 25.0,
        covariance: float = 1.0,
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
        self.invariance = invariance
        self.variance = variance
        self.covariance = covariance

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        # each view in a batch of its own (its BatchNorm statistics), as the official code runs them
        z1, z2 = self.head(self.backbone(view1)), self.head(self.backbone(view2))
        return vicreg_loss(z1, z2, self.invariance, self.variance, self.covariance)

    def gauss_newton_split(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, OuterLoss]:
        """None exists: the covariance term is quartic in the embeddings and the variance hinge
        relu(γ − std) is concave in them, so no convex ℓ of the embeddings gives this loss (the config
        refuses ``bilevel.curvature=ggn`` with VICReg before any work starts)."""
        raise NotImplementedError(
            "VICReg has no Gauss–Newton split (its covariance term is quartic in the embeddings, its "
            "variance hinge is not convex); use bilevel.curvature=hessian"
        )
