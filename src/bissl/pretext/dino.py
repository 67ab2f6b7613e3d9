"""DINO: self-distillation with no labels (Caron et al., *Emerging Properties in Self-Supervised Vision
Transformers*, ICCV 2021).

The student is backbone + DINO head (``head.projector``: an MLP, an L2-normalised bottleneck and a
weight-normalised last layer with ``out_dim`` logits); the teacher is its momentum copy (``target.backbone``,
``target.projector``), a constant everywhere but in ``after_step``. On two global views the loss is the mean
over the ordered pairs of different views of the cross-entropy

    H(P_t(x_a), P_s(x_b)) = −Σ_k softmax((t_a − c) / τ_t)_k · log softmax(s_b / τ_s)_k,   a ≠ b,

averaged over the rows of this rank's batch. The centre ``c`` (a buffer) is an exponential moving average of the
teacher's mean output over the global batch; ``loss`` only records this batch's mean, and ``after_step`` folds
it in (all-reduced across ranks), so Hessian-vector products and the upper phase never move it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bissl import distributed
from bissl.models import DINOHead
from bissl.pretext.base import OuterLoss
from bissl.pretext.momentum import MomentumTask
from bissl.pretext.simclr import softmax_cross_entropy_hvp


def teacher_probabilities(
    teacher: torch.Tensor, center: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """The centred, sharpened teacher distribution softmax((t − c) / τ_t), a constant (no gradient)."""
    return F.softmax((teacher.detach() - center) / temperature, dim=-1)


def dino_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float | torch.Tensor,
) -> torch.Tensor:
    """DINO's cross-entropy over every pair of different views, averaged over the pairs and the rows.

    ``student`` holds the student's logits of each view, ``teacher`` the teacher's logits of the views it saw:
    the first ``len(teacher)`` student views (the global crops), in the same order; the pair (a, b) scores
    student view b against teacher view a, and a = b is skipped. The teacher is a constant.
    """
    targets = [teacher_probabilities(t, center, teacher_temperature) for t in teacher]
    log_probabilities = [F.log_softmax(s / student_temperature, dim=-1) for s in student]
    terms = [
        -(target * log_probabilities[b]).sum(dim=-1).mean()
        for a, target in enumerate(targets)
        for b in range(len(student))
        if b != a
    ]
    if not terms:
        raise ValueError("the DINO loss needs two views at least (pairs of the same view are skipped)")
    return torch.stack(terms).mean()


class DINO(MomentumTask):
    """The pretext head φ_P is the DINO head (``head.projector``); the teacher (``target``) is its momentum copy
    with the backbone, raised from ``momentum`` to 1 along a half cosine (pretext/momentum.py).

    Buffers: ``center`` (1 × out_dim), the centre of the teacher's outputs, and ``teacher_temperature``, the
    τ_t of the next step: linear from ``warmup_teacher_temperature`` to ``teacher_temperature`` over the first
    ``warmup_fraction`` of the stage's steps, then constant. Both change only in ``after_step`` (and the
    temperature schedule restarts in ``reset_target``), so a checkpoint carries them.

    The class defaults are the published ones (the DINO authors' ``main_dino.py``): a 2048-2048-256 MLP,
    65,536 outputs with a normalised last layer, τ_s = 0.1, τ_t = 0.04 without warm-up, centre momentum 0.9,
    teacher momentum 0.996.
    """

    center: torch.Tensor
    teacher_temperature: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector_hidden: list[int] | tuple[int, ...] = (2048, 2048),
        projector_dim: int = 256,
        out_dim: int = 65536,
        norm_last_layer: bool = True,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        warmup_fraction: float = 0.0,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        projector = DINOHead(
            feature_dim, tuple(projector_hidden), projector_dim, out_dim, norm_last_layer=norm_last_layer
        )
        self.head = nn.ModuleDict({"projector": projector})
        self.student_temperature = student_temperature
        self.final_teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.warmup_fraction = warmup_fraction
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        # float64 whatever the model's dtype, so the schedule's values are kept exactly; as a 0-dim tensor it
        # does not change the dtype of the logits it divides
        start = torch.tensor(self.teacher_temperature_at(0.0), dtype=torch.float64)
        self.register_buffer("teacher_temperature", start)
        self._batch_center: torch.Tensor | None = None
        self._init_target(momentum, "cosine")

    def teacher_temperature_at(self, progress: float) -> float:
        """τ_t after ``progress`` of the stage: linear from the warm-up value to the final one over the first
        ``warmup_fraction``, then the final value."""
        if progress < self.warmup_fraction:
            share = progress / self.warmup_fraction
            return self.warmup_teacher_temperature + share * (
                self.final_teacher_temperature - self.warmup_teacher_temperature
            )
        return self.final_teacher_temperature

    def _logits(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher logits of both views (stacked, view 1 first); records the teacher's batch mean
        for the next centre update."""
        both = torch.cat([view1, view2])
        student = self._part("projector")(self.backbone(both))
        teacher = self.target_outputs(both)
        self._batch_center = teacher.detach().to(self.center.dtype).mean(dim=0, keepdim=True)
        return student, teacher

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        student, teacher = self._logits(view1, view2)
        return dino_loss(
            student.chunk(2),
            teacher.chunk(2),
            self.center,
            self.student_temperature,
            self.teacher_temperature,
        )

    def gauss_newton_split(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, OuterLoss]:
        """Split at the student's logits s (both views stacked): against the constant teacher targets,
        ℓ(s) = mean over pairs and rows of −q · log softmax(s / τ_s) is convex, and as every row is paired with
        one teacher view its Hessian is, per row, (diag(p) − ppᵀ) / (τ_s² · rows), p = softmax(s / τ_s)."""
        student, teacher = self._logits(view1, view2)
        teacher_views = teacher.chunk(2)
        center, temperature = self.center.clone(), self.teacher_temperature.clone()
        tau = self.student_temperature

        def value(outputs: torch.Tensor) -> torch.Tensor:
            return dino_loss(outputs.chunk(2), teacher_views, center, tau, temperature)

        mean_hvp = softmax_cross_entropy_hvp(student / tau)

        def hvp(u: torch.Tensor) -> torch.Tensor:
            return mean_hvp(u) / tau**2

        return student, OuterLoss(value, hvp)

    @torch.no_grad()
    def update_center(self) -> None:
        """c ← m·c + (1 − m)·(mean teacher output of the last loss's batch, averaged over ranks); the batch
        mean is then spent. Every rank calls it (an all-reduce) after the same step."""
        if self._batch_center is None:
            return
        (batch_center,) = distributed.all_reduce_flat([self._batch_center.to(self.center)])
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        self._batch_center = None

    def after_step(self, progress: float) -> None:
        super().after_step(progress)
        self.update_center()
        self.teacher_temperature.fill_(self.teacher_temperature_at(progress))

    def reset_target(self) -> None:
        super().reset_target()
        self.teacher_temperature.fill_(self.teacher_temperature_at(0.0))
