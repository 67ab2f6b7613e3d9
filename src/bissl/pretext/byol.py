"""BYOL: online backbone + projector + predictor against an EMA target; symmetric cosine loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bissl.models import mlp
from bissl.pretext.base import OuterLoss
from bissl.pretext.momentum import MomentumTask, ema_update


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), averaged over the batch."""
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()


class BYOL(MomentumTask):
    """The pretext head φ_P is projector + predictor; the target network is a constant everywhere but in
    ``after_step`` (its EMA update), so HVPs and the upper phase never move it (pretext/momentum.py)."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector_hidden: list[int] | tuple[int, ...] = (256, 256),
        projector_dim: int = 256,
        predictor_hidden: list[int] | tuple[int, ...] = (256,),
        ema: float = 0.9995,
        ema_schedule: str = "constant",
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
            last_bn=output_bn,
            last_bn_affine=output_bn,
            **biases,
        )
        predictor = mlp(projector_dim, tuple(predictor_hidden), projector_dim, **biases)
        self.head = nn.ModuleDict({"projector": projector, "predictor": predictor})
        self._init_target(ema, ema_schedule)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        both = torch.cat([view1, view2])
        projector, predictor = self._part("projector"), self._part("predictor")
        prediction = predictor(projector(self.backbone(both)))
        target = self.target_outputs(both)
        p1, p2 = prediction.chunk(2)
        t1, t2 = target.chunk(2)
        return byol_loss(p1, t2) + byol_loss(p2, t1)

    def gauss_newton_split(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, OuterLoss]:
        """Split at the L2-normalised predictions p̂ with the target ẑ constant: the loss 2 − 2 cos(p, z)
        is ‖p̂ − ẑ‖², so ℓ = Σ ‖p̂ − ẑ‖² / batch over both terms and ∇²ℓ = (2 / batch) I."""
        both = torch.cat([view1, view2])
        projector, predictor = self._part("projector"), self._part("predictor")
        normalised = F.normalize(predictor(projector(self.backbone(both))), dim=-1)
        target = F.normalize(self.target_outputs(both), dim=-1)
        t1, t2 = target.chunk(2)
        swapped = torch.cat([t2, t1])
        batch = view1.shape[0]

        def value(outputs: torch.Tensor) -> torch.Tensor:
            return ((outputs - swapped) ** 2).sum() / batch

        def hvp(u: torch.Tensor) -> torch.Tensor:
            return 2.0 * u / batch

        return normalised, OuterLoss(value, hvp)


__all__ = ["BYOL", "byol_loss", "ema_update"]
