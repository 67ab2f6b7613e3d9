"""BYOL: online backbone + projector + predictor against an EMA target; symmetric cosine loss."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from bissl.models import mlp
from bissl.pretext.base import OuterLoss, PretextTask


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), averaged over the batch."""
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target ← m·target + (1−m)·online for parameters; buffers are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


class _Online(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


class BYOL(PretextTask):
    """The pretext head φ_P is projector + predictor; the target network is a constant everywhere but in
    ``after_step`` (its EMA update), so HVPs and the upper phase never move it."""

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
    ) -> None:
        super().__init__()
        self.backbone = backbone
        biases = {"hidden_bias": hidden_bias, "output_bias": output_bias}
        projector = mlp(feature_dim, tuple(projector_hidden), projector_dim, **biases)
        predictor = mlp(projector_dim, tuple(predictor_hidden), projector_dim, **biases)
        self.head = nn.ModuleDict({"projector": projector, "predictor": predictor})
        self.base_ema = ema
        self.ema_schedule = ema_schedule
        self.target = copy.deepcopy(_Online(backbone, projector))
        self.target.requires_grad_(False)

    def _part(self, name: str) -> nn.Module:
        head: nn.ModuleDict = self.head  # type: ignore[assignment]
        return head[name]

    def momentum(self, progress: float) -> float:
        """Constant EMA, or BYOL's cosine increase from the base value to 1."""
        if self.ema_schedule == "cosine":
            return 1 - (1 - self.base_ema) * (math.cos(math.pi * progress) + 1) / 2
        return self.base_ema

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        both = torch.cat([view1, view2])
        projector, predictor = self._part("projector"), self._part("predictor")
        prediction = predictor(projector(self.backbone(both)))
        with torch.no_grad():
            target = self.target(both)
        p1, p2 = prediction.chunk(2)
        t1, t2 = target.chunk(2)
        return byol_loss(p1, t2) + byol_loss(p2, t1)

    def gauss_newton_split(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, OuterLoss]:
        """Split at the L2-normalised predictions p̂ with the target ẑ constant: the loss 2 − 2 cos(p, z)
        is ‖p̂ − ẑ‖², so ℓ = Σ ‖p̂ − ẑ‖² / batch over both terms and ∇²ℓ = (2 / batch) I."""
        both = torch.cat([view1, view2])
        projector, predictor = self._part("projector"), self._part("predictor")
        normalised = F.normalize(predictor(projector(self.backbone(both))), dim=-1)
        with torch.no_grad():
            target = F.normalize(self.target(both), dim=-1)
        t1, t2 = target.chunk(2)
        swapped = torch.cat([t2, t1])
        batch = view1.shape[0]

        def value(outputs: torch.Tensor) -> torch.Tensor:
            return ((outputs - swapped) ** 2).sum() / batch

        def hvp(u: torch.Tensor) -> torch.Tensor:
            return 2.0 * u / batch

        return normalised, OuterLoss(value, hvp)

    def after_step(self, progress: float) -> None:
        online = _Online(self.backbone, self._part("projector"))
        ema_update(self.target, online, self.momentum(progress))

    def reset_target(self) -> None:
        with torch.no_grad():
            online = _Online(self.backbone, self._part("projector"))
            for t, o in zip(self.target.parameters(), online.parameters(), strict=True):
                t.copy_(o)
            for tb, ob in zip(self.target.buffers(), online.buffers(), strict=True):
                tb.copy_(ob)
