"""The alternation of the BiSSL stage (docs/method.md, "Pipeline" step 3).

``BilevelTrainer`` is the library core: it takes built models and two batch sources and runs
alternations of ``lower_steps`` pretext steps (with the proximal term) and ``upper_steps`` downstream
steps whose backbone gradient goes through the lower solution by implicit differentiation. The set-up of
each upper phase (the curvature in the implicit system, Hessian or Gauss–Newton; the solver and its
options; a low-rank basis and a Lanczos spectrum estimate for diagnostics and adaptive damping) lives in
``bissl.bilevel.phase`` (docs/implicit.md). The ``bissl bilevel`` command, which builds all of this from a
config, logs, checkpoints and writes the lower backbone, is ``train_bilevel`` in
``bissl.train.bilevel_stage``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bissl import distributed
from bissl.bilevel.hvp import HessianVectorOperator, frozen_bn_stats
from bissl.bilevel.implicit import upper_gradients
from bissl.bilevel.phase import (
    Batch,
    PhaseCurvature,
    Reduce,
    SolveProbe,
    cosine,
    curvature_operator,
    needs_phase_products,
    prepare_phase,
    solver_options,
    solver_with_reduced_rhs,
)
from bissl.bilevel.solvers import SolveResult, Vectors
from bissl.config import BilevelConfig
from bissl.optim import load_optimizer_state, make_optimizer, set_lr, warmup_cosine
from bissl.precision import autocast
from bissl.pretext.base import PretextTask
from bissl.runtime import NonFiniteGuard


def proximal_term(lower: nn.Module, upper: nn.Module, lam: float) -> torch.Tensor:
    """(λ/2)‖θ_P − θ_D‖² over backbone parameters, θ_D held constant."""
    total = torch.zeros((), device=next(lower.parameters()).device, dtype=next(lower.parameters()).dtype)
    for p, q in zip(lower.parameters(), upper.parameters(), strict=True):
        total = total + (p - q.detach()).pow(2).sum()
    return 0.5 * lam * total


@torch.no_grad()
def parameter_distance(lower: nn.Module, upper: nn.Module) -> float:
    """‖θ_P − θ_D‖ over backbone parameters."""
    squares = [(p - q).pow(2).sum() for p, q in zip(lower.parameters(), upper.parameters(), strict=True)]
    return float(torch.stack(squares).sum().sqrt())


def _clip_joint(grads: list[torch.Tensor], max_norm: float | None) -> float:
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if max_norm is not None:
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale)
    return float(norm)


class BilevelTrainer:
    """Holds the lower model (θ_P, φ_P), the upper model (θ_D, φ_D), both optimisers and schedules.

    ``lower_batches()`` returns two augmented views of a pretext batch; ``upper_batches()`` returns an
    augmented downstream batch and its targets; ``downstream_loss(logits, targets)`` is L_D.
    ``reduce`` (distributed runs) averages across ranks the right-hand side of the implicit system (so every
    rank solves the same system), every HVP, and the final upper gradients.
    ``precision`` applies to the lower steps and the downstream passes, ``hvp_precision`` to the pretext
    loss that the Hessian-vector products differentiate ("fp32" or "bf16", see ``bissl.precision``).
    """

    def __init__(
        self,
        lower: PretextTask,
        upper_backbone: nn.Module,
        upper_head: nn.Module,
        downstream_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        lower_batches: Callable[[], Batch],
        upper_batches: Callable[[], Batch],
        settings: BilevelConfig,
        *,
        hessian_batches: Callable[[], Batch] | None = None,
        lars_eta: float = 0.001,
        lars_exclude_bias_norm: bool = True,
        max_nonfinite: int = 5,
        reduce: Reduce | None = None,
        lower_model: nn.Module | None = None,
        precision: str = "fp32",
        hvp_precision: str = "fp32",
    ) -> None:
        self.lower = lower
        self.lower_model = lower_model or lower
        self.upper_backbone = upper_backbone
        self.upper_head = upper_head
        self.downstream_loss = downstream_loss
        self.lower_batches = lower_batches
        self.hessian_batches = hessian_batches or lower_batches
        self.upper_batches = upper_batches
        self.settings = settings
        self.reduce = reduce
        self.precision = precision
        self.hvp_precision = hvp_precision
        s = settings
        named = [(n, p) for n, p in lower.named_parameters() if not n.startswith("target.")]
        self.lower_parameters = [p for _, p in named]
        self.lower_optimizer = make_optimizer(
            s.lower_optimizer,
            named,
            lr=s.lower_lr,
            momentum=s.lower_momentum,
            weight_decay=s.lower_weight_decay,
            exclude_bias_norm=lars_exclude_bias_norm,
            lars_eta=lars_eta,
        )
        upper_named = [
            *((f"backbone.{n}", p) for n, p in upper_backbone.named_parameters()),
            *((f"head.{n}", p) for n, p in upper_head.named_parameters()),
        ]
        self.upper_parameters = [p for _, p in upper_named]
        self.upper_optimizer = make_optimizer(
            s.upper_optimizer,
            upper_named,
            lr=s.upper_lr,
            momentum=s.upper_momentum,
            weight_decay=s.upper_weight_decay,
        )
        self.alternation = 0
        self.guard = NonFiniteGuard(max_nonfinite)

    @property
    def lower_backbone(self) -> nn.Module:
        return self.lower.backbone

    def _lower_lr(self, step: int) -> float:
        s = self.settings
        total = s.alternations * s.lower_steps
        return warmup_cosine(
            step, total, min(s.lower_warmup_steps, total), s.lower_lr, s.lower_lr * s.lower_final_lr_ratio
        )

    def _upper_lr(self, step: int) -> float:
        s = self.settings
        return warmup_cosine(
            step, s.alternations * s.upper_steps, 0, s.upper_lr, s.upper_lr * s.upper_final_lr_ratio
        )

    def lower_phase(self) -> dict[str, float]:
        """``lower_steps`` optimiser steps on L_P + (λ/2)‖θ_P − θ_D‖²."""
        s = self.settings
        self.lower.train()
        losses: list[float] = []
        regularisers: list[float] = []
        lr = 0.0
        for index in range(s.lower_steps):
            step = self.alternation * s.lower_steps + index
            lr = self._lower_lr(step)
            set_lr(self.lower_optimizer, lr)
            view1, view2 = self.lower_batches()
            with autocast(view1.device, self.precision):
                pretext_loss = self.lower_model(view1, view2)
            regulariser = proximal_term(self.lower.backbone, self.upper_backbone, s.lam)
            self.lower_optimizer.zero_grad(set_to_none=True)
            if not self.guard.ok(distributed.agree_finite(pretext_loss.detach()), "lower loss", step):
                continue
            (pretext_loss + regulariser).backward()
            grad_norm = _clip_joint(
                [p.grad for p in self.lower_parameters if p.grad is not None], s.clip_grad
            )
            if not self.guard.ok(grad_norm, "lower gradient norm", step):
                continue
            self.lower_optimizer.step()
            self.lower.after_step((step + 1) / (s.alternations * s.lower_steps))
            losses.append(float(pretext_loss.detach()))
            regularisers.append(float(regulariser.detach()))
        return {
            "lower_loss": sum(losses) / max(1, len(losses)),
            "regulariser": sum(regularisers) / max(1, len(regularisers)),
            "lower_lr": lr,
        }

    def upper_phase(self) -> dict[str, float]:
        """``upper_steps`` optimiser steps (SGD by default) on the implicit upper gradient, all products on one
        Hessian batch.

        With diagnostics due, adaptive damping or ``solver=lowrank``, the phase starts with Lanczos / basis
        products on the phase's operator; ``products`` counts every product the phase spent.
        """
        s = self.settings
        self.lower.train()
        self.upper_backbone.train()
        self.upper_head.train()
        hessian_views = self.hessian_batches()
        lower_params = tuple(self.lower.backbone.parameters())
        diagnose = s.diagnose_every > 0 and self.alternation % s.diagnose_every == 0
        operators: list[HessianVectorOperator] = []

        def make_operator() -> HessianVectorOperator:
            operators.append(curvature_operator(self.lower, hessian_views, s, precision=self.hvp_precision))
            return operators[-1]

        operator = make_operator() if s.hvp_scope == "phase" else None
        solution: tuple[torch.Tensor, ...] | None = None
        through_lower: list[float] = []
        through_upper: list[float] = []
        residuals: list[float] = []
        lr = 0.0
        try:
            if needs_phase_products(s, diagnose):
                phase = self._prepare_phase(operator or make_operator(), lower_params, diagnose)
                if operator is None:
                    operators[-1].release()
            else:
                phase = PhaseCurvature(s.damping, None, None, 0, 0)
            solver_settings = solver_options(s, phase)
            probe = SolveProbe(s.solver, self.reduce) if diagnose else None
            solver: str | Callable[..., SolveResult] = (
                probe
                if probe is not None
                else s.solver
                if self.reduce is None
                else solver_with_reduced_rhs(s.solver, self.reduce)
            )
            for index in range(s.upper_steps):
                step = self.alternation * s.upper_steps + index
                lr = self._upper_lr(step)
                set_lr(self.upper_optimizer, lr)
                images, targets = self.upper_batches()
                step_operator = operator if operator is not None else make_operator()

                def downstream(
                    backbone: nn.Module,
                    head: nn.Module,
                    images: torch.Tensor = images,
                    targets: torch.Tensor = targets,
                ) -> torch.Tensor:
                    with autocast(images.device, self.precision):
                        return self.downstream_loss(head(backbone(images)), targets)

                with nullcontext() if s.hvp_update_bn_stats else frozen_bn_stats(self.lower):
                    result = upper_gradients(
                        hvp_operator_or_matvec=step_operator,
                        lower_backbone=self.lower.backbone,
                        upper_backbone=self.upper_backbone,
                        upper_head=self.upper_head,
                        downstream_loss_fn=downstream,
                        lam=s.lam,
                        damping=phase.damping,
                        gamma=s.gamma,
                        solver=solver,
                        solver_options=solver_settings,
                        reduce=self.reduce,
                        x0=solution if s.warm_start else None,
                    )
                if operator is None:
                    step_operator.release()
                solution = result.solution
                grads = [g.clone() for g in (*result.backbone, *result.head)]
                norm = _clip_joint(grads, s.clip_grad)
                if not self.guard.ok(norm, "upper gradient norm", step):
                    continue
                for p, g in zip(self.upper_parameters, grads, strict=True):
                    p.grad = g
                self.upper_optimizer.step()
                self.upper_optimizer.zero_grad(set_to_none=True)
                through_lower.append(result.upper_loss_lower)
                through_upper.append(result.upper_loss_upper)
                residuals.append(result.residual_norm)
        finally:
            for built in operators:
                built.release()
        count = max(1, len(through_lower))
        record: dict[str, Any] = {
            "upper_loss_lower": sum(through_lower) / count,
            "upper_loss_upper": sum(through_upper) / count,
            "solver_residual": sum(residuals) / max(1, len(residuals)),
            "solver_residual_last": residuals[-1] if residuals else float("nan"),
            "upper_lr": lr,
            "damping": phase.damping,
            "products": sum(built.products for built in operators),
        }
        if phase.spectrum is not None:
            record |= {
                "lambda_min": phase.spectrum.lambda_min,
                "lambda_max": phase.spectrum.lambda_max,
                "ritz_below": phase.spectrum.below,
                "positive_definite": phase.spectrum.positive_definite,
            }
        if probe is not None:
            record |= {
                "true_residual": probe.true_residual,
                "cosine_first_order": probe.cosine,
                "diagnose_products": phase.estimate_products + min(1, probe.calls),
            }
        return record

    def _prepare_phase(
        self, operator: HessianVectorOperator, like: Sequence[torch.Tensor], diagnose: bool
    ) -> PhaseCurvature:
        """The phase's spectrum estimate, damping and low-rank basis from rank-averaged products."""
        reduce = self.reduce

        def matvec(vectors: Vectors) -> Vectors:
            product = operator.matvec(vectors)
            return product if reduce is None else reduce(product)

        return prepare_phase(matvec, like, self.settings, index=self.alternation, estimate=diagnose)

    def alternate(self) -> dict[str, float]:
        """One alternation: lower phase, Hessian batch, upper phase; returns its metrics."""
        started = time.perf_counter()
        record = self.lower_phase()
        lower_seconds = time.perf_counter() - started
        record |= self.upper_phase()
        record["lower_seconds"] = lower_seconds
        record["upper_seconds"] = time.perf_counter() - started - lower_seconds
        record["distance"] = parameter_distance(self.lower.backbone, self.upper_backbone)
        self.alternation += 1
        record["alternation"] = self.alternation
        return record

    def state_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower.state_dict(),
            "upper_backbone": self.upper_backbone.state_dict(),
            "upper_head": self.upper_head.state_dict(),
            "lower_optimizer": self.lower_optimizer.state_dict(),
            "upper_optimizer": self.upper_optimizer.state_dict(),
            "alternation": self.alternation,
            "guard": self.guard.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lower.load_state_dict(state["lower"])
        self.upper_backbone.load_state_dict(state["upper_backbone"])
        self.upper_head.load_state_dict(state["upper_head"])
        load_optimizer_state(self.lower_optimizer, state["lower_optimizer"], "bilevel.lower_optimizer")
        load_optimizer_state(self.upper_optimizer, state["upper_optimizer"], "bilevel.upper_optimizer")
        self.alternation = int(state["alternation"])
        self.guard.load_state_dict(state["guard"])


def initial_models(
    lower: PretextTask, warm_backbone: nn.Module | None, *, reset_target: bool = True
) -> nn.Module:
    """θ_P = θ_D = θ: the upper backbone starts as a copy of the lower one (after warm-up, if given). The
    target network (BYOL, MoCo v3) is re-copied from the online one unless ``reset_target`` is false (a target
    imported with its head)."""
    if warm_backbone is not None:
        lower.backbone.load_state_dict(warm_backbone.state_dict())
    if reset_target:
        lower.reset_target()
    return copy.deepcopy(lower.backbone)


__all__ = [
    "BilevelTrainer",
    "PhaseCurvature",
    "SolveProbe",
    "cosine",
    "curvature_operator",
    "initial_models",
    "needs_phase_products",
    "parameter_distance",
    "prepare_phase",
    "proximal_term",
    "solver_options",
    "solver_with_reduced_rhs",
]
