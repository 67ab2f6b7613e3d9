"""The alternating BiSSL stage (SPEC §4.3).

``BilevelTrainer`` is the library core: it takes built models and two batch sources and runs
alternations of ``lower_steps`` pretext steps (with the proximal term) and ``upper_steps`` downstream
steps whose backbone gradient goes through the lower solution by implicit differentiation. The curvature
in the implicit system (Hessian or Gauss–Newton), the solver, a low-rank basis and a Lanczos spectrum
estimate (diagnostics, adaptive damping) are set up once per upper phase (SPEC §8, docs/implicit.md).
``train_bilevel`` is the ``bissl bilevel`` command: it builds everything from a config, logs, checkpoints
and writes the lower backbone.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bissl import distributed
from bissl.bilevel.hvp import HessianVectorOperator, frozen_bn_stats, hessian_vector_operator
from bissl.bilevel.implicit import upper_gradients
from bissl.bilevel.solvers import SOLVERS, Matvec, SolveResult, Vectors, true_residual
from bissl.bilevel.spectrum import (
    LowRankCurvature,
    SpectrumSummary,
    adaptive_damping,
    build_lowrank,
    flatten,
    lanczos,
    spectrum_summary,
)
from bissl.config import BilevelConfig
from bissl.optim import LARS, lars_groups, set_lr, warmup_cosine
from bissl.precision import autocast
from bissl.pretext.base import PretextTask
from bissl.runtime import NonFiniteGuard

Batch = tuple[torch.Tensor, torch.Tensor]
Reduce = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


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


def solver_with_reduced_rhs(solver: str, reduce: Reduce) -> Callable[..., SolveResult]:
    """The named solver run on the rank-averaged right-hand side. Every rank then solves one common system,
    so averaging each HVP across ranks applies the Hessian of the global batch to the same vector."""
    solve = SOLVERS[solver]

    def solve_reduced(matvec: Any, b: tuple[torch.Tensor, ...], **options: Any) -> SolveResult:
        return solve(matvec, reduce(tuple(b)), **options)

    return solve_reduced


# Start vectors of the phase's Lanczos runs and sketches: a function of the alternation index only, so
# every rank draws the same ones (and a resumed run the same as an uninterrupted one).
_SPECTRUM_SEED = 104_729
_LOWRANK_SEED = 15_485_863


def curvature_operator(
    lower: PretextTask, hessian_views: Batch, settings: BilevelConfig, *, precision: str = "fp32"
) -> HessianVectorOperator:
    """The curvature of the pretext loss on the Hessian batch w.r.t. the lower backbone: the Hessian
    (``curvature=hessian``) or the Gauss–Newton matrix at the task's split point (``curvature=ggn``)."""
    params = tuple(lower.backbone.parameters())
    device = hessian_views[0].device
    if settings.curvature == "ggn":
        from bissl.bilevel.ggn import gauss_newton_operator

        def split() -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
            with autocast(device, precision):
                return lower.gauss_newton_split(*hessian_views)

        return gauss_newton_operator(
            split,
            params,
            mode=settings.hvp_mode,
            modules=[lower],
            update_bn_stats=settings.hvp_update_bn_stats,
        )

    def pretext_loss() -> torch.Tensor:
        with autocast(device, precision):
            return lower(*hessian_views)

    return hessian_vector_operator(
        pretext_loss,
        params,
        mode=settings.hvp_mode,
        modules=[lower],
        update_bn_stats=settings.hvp_update_bn_stats,
    )


@dataclass
class PhaseCurvature:
    """What the start of an upper phase computed on the phase's curvature: the damping δ the phase uses,
    the Lanczos spectrum estimate (when diagnosing or adapting δ), the low-rank basis (solver=lowrank)."""

    damping: float
    spectrum: SpectrumSummary | None
    lowrank: LowRankCurvature | None
    estimate_products: int
    products: int


def _generator(seed: int, like: Sequence[torch.Tensor]) -> torch.Generator:
    return torch.Generator(device=like[0].device).manual_seed(seed)


def prepare_phase(
    matvec: Matvec, like: Sequence[torch.Tensor], settings: BilevelConfig, *, index: int, estimate: bool
) -> PhaseCurvature:
    """Lanczos estimate (``estimate`` or adaptive damping: ``diagnose_steps`` products), the raised δ, and
    the low-rank basis (``lowrank_rank`` products) for one upper phase; ``index`` seeds the start vectors.

    ``matvec`` must already be rank-averaged under torchrun, so every rank computes the same numbers.
    Non-finite products (a diverging lower level) do not stop the run: the estimate is then NaN, δ stays
    as configured and the basis is empty (the low-rank step becomes the first-order one), and the upper
    steps' non-finite guard decides what happens next.
    """
    s = settings
    like = tuple(like)
    damping = s.damping
    spectrum = None
    estimate_products = 0
    if estimate or s.adaptive_damping:
        try:
            estimate_result = lanczos(
                matvec,
                like,
                steps=s.diagnose_steps,
                generator=_generator(_SPECTRUM_SEED + index, like),
                vectors=False,
            )
        except torch.linalg.LinAlgError:
            estimate_products = min(s.diagnose_steps, sum(t.numel() for t in like))
            spectrum = SpectrumSummary(math.nan, math.nan, 0, False, s.lam + damping)
        else:
            estimate_products = estimate_result.products
            lambda_min = float(estimate_result.ritz_values[0])
            if s.adaptive_damping and math.isfinite(lambda_min):
                damping = min(adaptive_damping(lambda_min, s.lam, s.damping, s.damping_margin), s.damping_max)
            spectrum = spectrum_summary(estimate_result, s.lam + damping)
    lowrank = None
    products = estimate_products
    if s.solver == "lowrank":
        try:
            lowrank = build_lowrank(
                matvec,
                like,
                rank=s.lowrank_rank,
                method=s.lowrank_method,
                generator=_generator(_LOWRANK_SEED + index, like),
            )
        except (torch.linalg.LinAlgError, ValueError):
            lowrank = _empty_basis(like, s.lowrank_rank)
        products += lowrank.products
    return PhaseCurvature(damping, spectrum, lowrank, estimate_products, products)


def _empty_basis(like: Sequence[torch.Tensor], attempted: int) -> LowRankCurvature:
    """A rank-0 basis: its inverse is the identity (the fallback when products were not finite)."""
    size = sum(t.numel() for t in like)
    reference = like[0]
    return LowRankCurvature(
        basis=torch.empty(0, size, dtype=reference.dtype, device=reference.device),
        values=torch.empty(0, dtype=torch.float64, device=reference.device),
        like=tuple(t.shape for t in like),
        products=min(attempted, size),
    )


def needs_phase_products(settings: BilevelConfig, diagnose: bool) -> bool:
    """Whether ``prepare_phase`` spends products (otherwise it only returns the configured damping)."""
    return diagnose or settings.adaptive_damping or settings.solver == "lowrank"


def solver_options(settings: BilevelConfig, phase: PhaseCurvature) -> dict[str, Any]:
    """Keyword options of the configured solver for every upper step of a phase."""
    s = settings
    options: dict[str, Any] = {"iterations": s.cg_iterations, "tol": s.tolerance}
    if s.solver == "cg":
        options["layerwise"] = s.layerwise
    elif s.solver == "neumann":
        options["scale"] = s.neumann_scale
    elif s.solver == "lowrank":
        options |= {
            "iterations": s.lowrank_refine_iterations,
            "curvature": phase.lowrank,
            "mu": s.lam + phase.damping,
            "negative": s.lowrank_negative,
            "refine": s.lowrank_refine,
        }
    return options


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """cos(a, b) over the concatenated vectors, in float64 (NaN when either is zero)."""
    flat_a, flat_b = flatten(tuple(a)).double(), flatten(tuple(b)).double()
    denominator = float(flat_a.norm() * flat_b.norm())
    return float(flat_a @ flat_b) / denominator if denominator > 0 else math.nan


class SolveProbe:
    """A solver that runs the named one on the (rank-averaged) right-hand side and, on its first call,
    measures the solution on the solver's own system: the true relative residual ‖v − A x‖/‖v‖ (one
    product) and cos(x, v) against the first-order direction v."""

    def __init__(self, solver: str, reduce: Reduce | None = None) -> None:
        self.solve = SOLVERS[solver]
        self.reduce = reduce
        self.true_residual = math.nan
        self.cosine = math.nan
        self.calls = 0

    def __call__(self, matvec: Matvec, b: Sequence[torch.Tensor], **options: Any) -> SolveResult:
        rhs: Vectors = tuple(b) if self.reduce is None else self.reduce(tuple(b))
        result = self.solve(matvec, rhs, **options)
        if self.calls == 0:
            self.true_residual = true_residual(matvec, rhs, result.x)
            self.cosine = cosine(result.x, rhs)
        self.calls += 1
        return result


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
        self.lower_optimizer = LARS(
            lars_groups(named, lars_exclude_bias_norm),
            lr=s.lower_lr,
            momentum=s.lower_momentum,
            weight_decay=s.lower_weight_decay,
            eta=lars_eta,
        )
        self.upper_parameters = [*upper_backbone.parameters(), *upper_head.parameters()]
        self.upper_optimizer = torch.optim.SGD(
            self.upper_parameters, lr=s.upper_lr, momentum=s.upper_momentum, weight_decay=s.upper_weight_decay
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
        """``upper_steps`` SGD steps on the implicit upper gradient, all products on one Hessian batch.

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
            "cg_residual": sum(residuals) / max(1, len(residuals)),
            "cg_residual_last": residuals[-1] if residuals else float("nan"),
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
        self.lower_optimizer.load_state_dict(state["lower_optimizer"])
        self.upper_optimizer.load_state_dict(state["upper_optimizer"])
        self.alternation = int(state["alternation"])
        self.guard.load_state_dict(state["guard"])


def initial_models(lower: PretextTask, warm_backbone: nn.Module | None) -> nn.Module:
    """θ_P = θ_D = θ: the upper backbone starts as a copy of the lower one (after warm-up, if given)."""
    if warm_backbone is not None:
        lower.backbone.load_state_dict(warm_backbone.state_dict())
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
