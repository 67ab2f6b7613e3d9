"""The upper-level gradient of BiSSL by implicit differentiation (docs/method.md: Implicit gradient).

    g_θD = (I + H/(λ+δ))^(-1) ∇_θ L_D(θ_P, φ_D) + γ ∇_θ L_D(θ_D, φ_D)
    g_φD = ∇_φ L_D(θ_P, φ_D) + γ ∇_φ L_D(θ_D, φ_D)

``reduce`` is an optional hook (e.g. one flat all-reduce across ranks) applied to every Hessian-vector
product and once to the final gradients; the math here does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bissl.bilevel.hvp import HessianVectorOperator, flat_parameters
from bissl.bilevel.solvers import SOLVERS, Matvec, SolveResult, Vectors

Reduce = Callable[[Vectors], Vectors]
DownstreamLossFn = Callable[[nn.Module, nn.Module], Tensor]

DEFAULT_ITERATIONS = 5


def inverse_jacobian_product(
    matvec: Matvec,
    v: Sequence[Tensor],
    *,
    lam: float,
    damping: float,
    solver: str | Callable[..., SolveResult] = "cg",
    reduce: Reduce | None = None,
    **solver_options: Any,
) -> SolveResult:
    """Solve x + H x / (lam + damping) = v, with ``matvec(x) = H x`` and ``solver`` a name in ``SOLVERS``.

    ``solver_options`` go to the solver (``iterations`` defaults to 5, as in the reference);
    ``reduce`` is applied to every H x before it enters the system.
    """
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(f"solver {solver!r} is not one of {', '.join(SOLVERS)}")
        solve = SOLVERS[solver]
    else:
        solve = solver
    if solver == "neumann" and "scale" not in solver_options:
        raise ValueError(
            "solver='neumann' needs scale= (converges for 0 < scale < 2/λ_max(I + H/(lam+damping)))"
        )
    solver_options.setdefault("iterations", DEFAULT_ITERATIONS)
    inverse_strength = 1.0 / (lam + damping)

    def system(x: Vectors) -> Vectors:
        hessian_x = matvec(x)
        if reduce is not None:
            hessian_x = reduce(hessian_x)
        return tuple(x_i + inverse_strength * h_i for x_i, h_i in zip(x, hessian_x))

    return solve(system, tuple(t.detach() for t in v), **solver_options)


@dataclass
class UpperGradients:
    """Gradients for θ_D (``backbone``) and φ_D (``head``) with solver diagnostics and the two losses.

    ``solution`` is the solver's x (a warm start for the next upper step); ``upper_loss_upper`` is NaN
    when γ = 0 (the θ_D pass is skipped).
    """

    backbone: Vectors
    head: Vectors
    solution: Vectors
    residual_norm: float
    iterations: int
    upper_loss_lower: float
    upper_loss_upper: float


def _gradients(loss: Tensor, params: Vectors) -> Vectors:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))


def upper_gradients(
    *,
    hvp_operator_or_matvec: HessianVectorOperator | Matvec,
    lower_backbone: nn.Module,
    upper_backbone: nn.Module,
    upper_head: nn.Module,
    downstream_loss_fn: DownstreamLossFn,
    lam: float,
    damping: float,
    gamma: float,
    solver: str | Callable[..., SolveResult] = "cg",
    solver_options: dict[str, Any] | None = None,
    reduce: Reduce | None = None,
    x0: Sequence[Tensor] | None = None,
) -> UpperGradients:
    """The upper gradients (docs/method.md: Implicit gradient) of one downstream batch, returned, not in ``.grad``.

    ``hvp_operator_or_matvec`` is the H of the pretext loss on the Hessian batch w.r.t. ``flat_parameters(lower_backbone)``
    (an operator from ``hessian_vector_operator`` or a plain matvec); ``downstream_loss_fn(backbone, head)``
    returns L_D on the fixed downstream batch. Running statistics touched by ``downstream_loss_fn`` are
    the caller's choice (wrap it in ``frozen_bn_stats`` to keep them).
    """
    lower_params = flat_parameters(lower_backbone)
    upper_params = flat_parameters(upper_backbone)
    head_params = flat_parameters(upper_head)
    if [p.shape for p in lower_params] != [p.shape for p in upper_params]:
        raise ValueError("lower_backbone and upper_backbone must have the same parameter shapes")
    operator_params = getattr(hvp_operator_or_matvec, "params", None)
    if operator_params is not None and [id(p) for p in operator_params] != [id(p) for p in lower_params]:
        raise ValueError("the Hessian operator must be built on flat_parameters(lower_backbone)")
    matvec: Matvec = (
        hvp_operator_or_matvec.matvec
        if isinstance(hvp_operator_or_matvec, HessianVectorOperator)
        else hvp_operator_or_matvec
    )

    with torch.enable_grad():
        loss_lower = downstream_loss_fn(lower_backbone, upper_head)
        grads_lower = _gradients(loss_lower, lower_params + head_params)
    v, head_grad = grads_lower[: len(lower_params)], grads_lower[len(lower_params) :]

    options = dict(solver_options or {})
    if x0 is not None:
        options["x0"] = tuple(x0)
    result = inverse_jacobian_product(
        matvec, v, lam=lam, damping=damping, solver=solver, reduce=reduce, **options
    )
    backbone_grad = result.x

    loss_upper_value = float("nan")
    if gamma != 0:
        with torch.enable_grad():
            loss_upper = downstream_loss_fn(upper_backbone, upper_head)
            grads_upper = _gradients(loss_upper, upper_params + head_params)
        loss_upper_value = float(loss_upper.detach())
        backbone_grad = tuple(x + gamma * g for x, g in zip(backbone_grad, grads_upper[: len(upper_params)]))
        head_grad = tuple(h + gamma * g for h, g in zip(head_grad, grads_upper[len(upper_params) :]))

    if reduce is not None:
        combined = reduce(tuple(backbone_grad) + tuple(head_grad))
        backbone_grad, head_grad = combined[: len(upper_params)], combined[len(upper_params) :]

    return UpperGradients(
        backbone=tuple(g.detach() for g in backbone_grad),
        head=tuple(g.detach() for g in head_grad),
        solution=result.x,
        residual_norm=result.residual_norm,
        iterations=result.iterations,
        upper_loss_lower=float(loss_lower.detach()),
        upper_loss_upper=loss_upper_value,
    )
