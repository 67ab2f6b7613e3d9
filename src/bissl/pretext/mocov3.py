"""MoCo v3: a contrastive loss between the online encoder's predictions and a momentum encoder's keys
(Chen, Xie and He, ICCV 2021).

q = predictor(projector(backbone(x))) for both views, k = target(x) (the momentum copy of backbone +
projector, a constant: no gradient); loss = ctr(q1, k2) + ctr(q2, k1) with
ctr(q, k) = 2τ · CE(normalize(q) normalize(k_all)ᵀ / τ, own index), the keys gathered from every rank and each
rank scoring its own queries, so the mean of the ranks' losses is the single-process loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bissl import distributed
from bissl.models import mlp
from bissl.pretext.base import OuterLoss
from bissl.pretext.momentum import MomentumTask
from bissl.pretext.simclr import softmax_cross_entropy_hvp


def mocov3_logits(q: torch.Tensor, k: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """normalize(q) @ normalize(k_all)ᵀ / τ with the keys of every rank gathered (as constants), and each
    query's positive: its own index in the global batch (local index + rank × local batch)."""
    q = F.normalize(q, dim=1)
    keys = distributed.gather_rows(F.normalize(k.detach(), dim=1))
    offset = distributed.rank() * q.shape[0] if distributed.is_distributed() else 0
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return q @ keys.T / temperature, labels


def contrastive(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """ctr(q, k) = 2τ · CE(normalize(q) normalize(k_all)ᵀ / τ, own index), averaged over this rank's queries."""
    logits, labels = mocov3_logits(q, k, temperature)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def mocov3_loss(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float
) -> torch.Tensor:
    """ctr(q1, k2) + ctr(q2, k1): each view's predictions against the other view's keys."""
    return contrastive(q1, k2, temperature) + contrastive(q2, k1, temperature)


class MoCoV3(MomentumTask):
    """The pretext head φ_P is projector (its output BatchNorm without affine parameters) + predictor; the
    momentum target (backbone + projector) is a constant everywhere but in ``after_step``."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector_hidden: list[int] | tuple[int, ...] = (256, 256),
        projector_dim: int = 256,
        predictor_hidden: list[int] | tuple[int, ...] = (256,),
        temperature: float = 1.0,
        momentum: float = 0.99,
        momentum_schedule: str = "cosine",
        hidden_bias: bool = False,
        output_bias: bool = True,
        hidden_bn: bool = True,
        output_bn: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        biases = {"hidden_bias": hidden_bias, "output_bias": output_bias, "hidden_bn": hidden_bn}
        projector = mlp(
            feature_dim,
            tuple(projector_hidden),
            projector_dim,
            last_bn=True,
            last_bn_affine=output_bn,
            **biases,
        )
        predictor = mlp(projector_dim, tuple(predictor_hidden), projector_dim, **biases)
        self.head = nn.ModuleDict({"projector": projector, "predictor": predictor})
        self.temperature = temperature
        self._init_target(momentum, momentum_schedule)

    def _queries_and_keys(
        self, view1: torch.Tensor, view2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # each view in a batch of its own (its BatchNorm statistics), as the official code runs them
        projector, predictor = self._part("projector"), self._part("predictor")
        q1, q2 = (predictor(projector(self.backbone(view))) for view in (view1, view2))
        return q1, q2, self.target_outputs(view1), self.target_outputs(view2)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        return mocov3_loss(*self._queries_and_keys(view1, view2), self.temperature)

    def gauss_newton_split(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, OuterLoss]:
        """Split at the logits of both terms (stacked): ℓ = 2τ (CE₁ + CE₂) is convex in them, with Hessian
        4τ times that of the cross-entropy averaged over all stacked rows (per row diag(p) − ppᵀ)."""
        q1, q2, k1, k2 = self._queries_and_keys(view1, view2)
        first, labels = mocov3_logits(q1, k2, self.temperature)
        second, _ = mocov3_logits(q2, k1, self.temperature)
        logits = torch.cat([first, second])
        scale = 2 * self.temperature
        rows = first.shape[0]
        mean_hvp = softmax_cross_entropy_hvp(logits)

        def value(outputs: torch.Tensor) -> torch.Tensor:
            return scale * (F.cross_entropy(outputs[:rows], labels) + F.cross_entropy(outputs[rows:], labels))

        def hvp(u: torch.Tensor) -> torch.Tensor:
            return (2 * scale) * mean_hvp(u)

        return logits, OuterLoss(value, hvp)
