"""SimCLR: NT-Xent over two views, negatives gathered across ranks (differentiably)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bissl import distributed
from bissl.models import mlp
from bissl.pretext.base import OuterLoss, PretextTask


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy over 2N embeddings (each view's positive is its pair).

    In a distributed run the embeddings of every rank are gathered (with gradients) and each rank scores
    its own rows against all of them; the loss is averaged so that the mean over ranks equals the
    single-process loss on the concatenated batch.
    """
    logits, positive_index = nt_xent_logits(z1, z2, temperature)
    return F.cross_entropy(logits, positive_index)


def nt_xent_logits(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked similarity logits of NT-Xent (self-similarities set to −inf) and each row's positive."""
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    local = z1.shape[0]
    all_z1 = distributed.gather_with_grad(z1)
    all_z2 = distributed.gather_with_grad(z2)
    total = all_z1.shape[0]
    offset = distributed.rank() * local if distributed.is_distributed() else 0
    candidates = torch.cat([all_z1, all_z2], dim=0)
    queries = torch.cat([z1, z2], dim=0)
    logits = queries @ candidates.T / temperature
    rows = torch.arange(local, device=z1.device) + offset
    self_index = torch.cat([rows, rows + total])
    positive_index = torch.cat([rows + total, rows])
    logits = logits.masked_fill(F.one_hot(self_index, num_classes=2 * total).bool(), float("-inf"))
    return logits, positive_index


def softmax_cross_entropy_hvp(logits: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """u ↦ ∇² (mean over rows of cross-entropy) u at ``logits``: per row (diag(p) − p pᵀ) u / rows.

    Masked (−inf) logits have p = 0, so their entries of the product are 0, never NaN.
    """
    probabilities = torch.softmax(logits.detach().double(), dim=1)
    rows = logits.shape[0]

    def hvp(u: torch.Tensor) -> torch.Tensor:
        u64 = torch.nan_to_num(u.double(), nan=0.0, posinf=0.0, neginf=0.0)
        weighted = probabilities * u64
        product = weighted - probabilities * weighted.sum(dim=1, keepdim=True)
        return (product / rows).to(u.dtype)

    return hvp


class SimCLR(PretextTask):
    """Backbone + MLP projector (256-256-256 with BN by default) + NT-Xent."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector_hidden: list[int] | tuple[int, ...] = (256, 256),
        projector_dim: int = 256,
        temperature: float = 0.5,
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
        self.temperature = temperature

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(torch.cat([view1, view2])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.temperature)

    def gauss_newton_split(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, OuterLoss]:
        """Split at the masked similarity logits; ℓ is their row-averaged cross-entropy (convex)."""
        z = self.head(self.backbone(torch.cat([view1, view2])))
        z1, z2 = z.chunk(2)
        logits, positive_index = nt_xent_logits(z1, z2, self.temperature)

        def value(outputs: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs, positive_index)

        return logits, OuterLoss(value, softmax_cross_entropy_hvp(logits))
