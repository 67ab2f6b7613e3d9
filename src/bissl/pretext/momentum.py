"""Momentum (EMA) target networks, shared by BYOL and MoCo v3.

The target is a frozen copy of the online backbone + projector, laid out as ``target.backbone`` and
``target.projector``. It is a constant everywhere but in ``after_step`` (the EMA update) and ``reset_target``
(a fresh copy): Hessian-vector products and the upper phase never move its weights, and its forward runs on
batch statistics without touching its BatchNorm running statistics, which are copied from the online network
at every update (they never enter a loss: the target runs in training mode).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from bissl.models.batchnorm import untracked_bn_stats
from bissl.pretext.base import PretextTask


class _Online(nn.Module):
    """Backbone then projector: the online encoder whose momentum copy is the target."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target ← m·target + (1−m)·online for parameters; buffers are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


@torch.no_grad()
def copy_online(target: nn.Module, online: nn.Module) -> None:
    """target ← online, parameters and buffers."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.copy_(o)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


def momentum_at(base: float, schedule: str, progress: float) -> float:
    """The EMA decay at ``progress`` in [0, 1]: constant, or raised from ``base`` to 1 along a half cosine,
    m = 1 − (1 − base)(cos(π·progress) + 1)/2 (BYOL, MoCo v3)."""
    if schedule == "cosine":
        return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2
    return base


class MomentumTask(PretextTask):
    """A pretext task with a momentum target of ``backbone`` + ``head["projector"]`` (BYOL, MoCo v3).

    Subclasses set ``backbone`` and ``head`` (an ``nn.ModuleDict`` with a ``"projector"``), then call
    ``_init_target(base, schedule)``. The target is excluded from ``trainable_parameters``.
    """

    target: nn.Module

    def _init_target(self, base: float, schedule: str) -> None:
        self.base_momentum = base
        self.momentum_schedule = schedule
        self.target = copy.deepcopy(self._online())
        self.target.requires_grad_(False)

    def _part(self, name: str) -> nn.Module:
        head: nn.ModuleDict = self.head  # type: ignore[assignment]
        return head[name]

    def _online(self) -> _Online:
        return _Online(self.backbone, self._part("projector"))

    def momentum(self, progress: float) -> float:
        """The EMA decay of the update after the step that reaches ``progress`` of training."""
        return momentum_at(self.base_momentum, self.momentum_schedule, progress)

    @torch.no_grad()
    def target_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """The target's projections of ``images``: a constant (no gradient), running statistics untouched."""
        with untracked_bn_stats(self.target):
            output: torch.Tensor = self.target(images)
        return output

    def after_step(self, progress: float) -> None:
        ema_update(self.target, self._online(), self.momentum(progress))

    def reset_target(self) -> None:
        copy_online(self.target, self._online())
