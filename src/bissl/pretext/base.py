"""The pretext-task interface: a backbone, a head, a loss on two views, and a hook after each step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class OuterLoss:
    """A convex loss ℓ on a task's split outputs: calling it gives ∇²ℓ(outputs) u; ``value(outputs)`` is ℓ.

    The Hessian is taken at the outputs the split returned; ``value`` is there for checks.
    """

    value: Callable[[torch.Tensor], torch.Tensor]
    hvp: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.hvp(u)


class PretextTask(nn.Module):
    """A self-supervised objective over a backbone.

    Subclasses set ``backbone`` and ``head`` (the trainable pretext head φ_P) and implement ``loss``.
    ``after_step`` runs after every optimiser step of the lower level (BYOL's EMA update); it never
    runs inside Hessian-vector products or the upper phase.
    """

    backbone: nn.Module
    head: nn.Module

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        return self.loss(view1, view2)

    def gauss_newton_split(
        self, view1: torch.Tensor, view2: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The loss split as ℓ(outputs) with ℓ convex, for Gauss–Newton curvature G = Jᵀ ∇²ℓ J (docs/method.md: Indefinite systems).

        Returns ``outputs`` (computed from the parameters) and ``outer_hvp(u) = ∇²ℓ(outputs) u`` (an
        ``OuterLoss``, whose ``value(outputs)`` equals ``loss(view1, view2)``). Tasks without such a split
        keep this default.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no Gauss–Newton split; use bilevel.curvature=hessian"
        )

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step; ``progress`` in [0, 1] is the fraction of training done."""

    def reset_target(self) -> None:
        """Re-copy any target network from the online one (BYOL); a no-op otherwise."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Backbone and head parameters (a target network is excluded)."""
        return [*self.backbone.parameters(), *self.head.parameters()]
