"""The set-up of one upper phase of the BiSSL stage (docs/method.md, "Implicit gradient" and "Indefinite
systems"; docs/implicit.md).

Each upper phase builds the curvature of the pretext loss on its Hessian batch (``curvature_operator``:
Hessian or Gauss–Newton), then, where the settings ask for it, spends products on a Lanczos spectrum
estimate (diagnostics, adaptive damping) and a low-rank basis (``prepare_phase``), and fixes the solver's
options for all its steps (``solver_options``). Under torchrun every rank solves one common system
(``solver_with_reduced_rhs``); with diagnostics due, ``SolveProbe`` measures the first solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bissl.bilevel.hvp import HessianVectorOperator, hessian_vector_operator
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
from bissl.precision import autocast
from bissl.pretext.base import PretextTask

Batch = tuple[torch.Tensor, torch.Tensor]
Reduce = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


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
    options: dict[str, Any] = {"iterations": s.solver_iterations, "tol": s.tolerance}
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


__all__ = [
    "Batch",
    "PhaseCurvature",
    "Reduce",
    "SolveProbe",
    "cosine",
    "curvature_operator",
    "needs_phase_products",
    "prepare_phase",
    "solver_options",
    "solver_with_reduced_rhs",
]
