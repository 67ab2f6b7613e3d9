"""Linear solvers for A x = b where A is symmetric and given only as a matvec (SPEC §3.1, §3.2).

Vectors are tuples of tensors shaped like the parameters. Every solver has the signature
``solver(matvec, b, *, iterations, tol=0.0, x0=None, ...)`` and returns a ``SolveResult``, so callers
can dispatch by name through ``SOLVERS`` and warm-start from a previous solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Vectors = tuple[Tensor, ...]
Matvec = Callable[[Vectors], Vectors]

EPS = 1e-12


@dataclass
class SolveResult:
    """A solution with the matvec iterations it took and its relative residual ‖b − A x‖ / ‖b‖.

    ``residual_norm`` is NaN where a solver does not compute it (``identity``).
    """

    x: Vectors
    iterations: int
    residual_norm: float


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product of two tuples of tensors, as a 0-d tensor."""
    return torch.stack([torch.sum(x * y) for x, y in zip(a, b)]).sum()


def _norm(a: Sequence[Tensor]) -> float:
    """Euclidean norm of a tuple of tensors, as a Python float."""
    return math.sqrt(float(_dot(a, a)))


def _relative(residual: Sequence[Tensor], b_norm: float) -> float:
    """‖r‖ / ‖b‖, or ‖r‖ when b = 0."""
    norm = _norm(residual)
    return norm / b_norm if b_norm > 0 else norm


def _finite(x: Sequence[Tensor]) -> Vectors:
    """Non-finite entries become 0, as in the reference."""
    return tuple(torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0) for t in x)


def _initial_residual(matvec: Matvec, b: Vectors, x0: Sequence[Tensor] | None) -> tuple[Vectors, Vectors]:
    """x0 (zeros by default) and r0 = b − A x0; no matvec is spent when x0 is None."""
    if x0 is None:
        return tuple(torch.zeros_like(t) for t in b), tuple(t.clone() for t in b)
    x = tuple(t.detach().clone() for t in x0)
    return x, tuple(bi - ai for bi, ai in zip(b, matvec(x)))


def cg(
    matvec: Matvec,
    b: Sequence[Tensor],
    *,
    iterations: int,
    tol: float = 0.0,
    x0: Sequence[Tensor] | None = None,
    layerwise: bool = True,
) -> SolveResult:
    """Conjugate gradient for SPD A: ``layerwise=True`` is the reference's per-tensor step sizes
    (SPEC §3.1), ``False`` textbook CG; ``tol > 0`` stops once ‖r‖/‖b‖ ≤ tol.

    The residual is the recursion's r_k (for layerwise CG an estimate, not ‖b − A x_k‖).
    """
    b = tuple(t.detach() for t in b)
    b_norm = _norm(b)
    x, residual = _initial_residual(matvec, b, x0)
    direction = tuple(t.clone() for t in residual)
    used = 0
    if tol > 0 and _relative(residual, b_norm) <= tol:
        return SolveResult(_finite(x), 0, _relative(residual, b_norm))
    for _ in range(iterations):
        product = matvec(direction)
        used += 1
        if layerwise:
            x, residual, direction = _layerwise_step(x, residual, direction, product)
        else:
            x, residual, direction = _global_step(x, residual, direction, product)
        if tol > 0 and _relative(residual, b_norm) <= tol:
            break
    return SolveResult(_finite(x), used, _relative(residual, b_norm))


def _layerwise_step(x: Vectors, r: Vectors, d: Vectors, ad: Vectors) -> tuple[Vectors, Vectors, Vectors]:
    """One CG step with α_i, β_i computed per tensor i (eps in every denominator)."""
    new_x, new_r, new_d = [], [], []
    for x_i, r_i, d_i, ad_i in zip(x, r, d, ad):
        rr = torch.sum(r_i * r_i)
        alpha = rr / (torch.sum(d_i * ad_i) + EPS)
        x_next = x_i + alpha * d_i
        r_next = r_i - alpha * ad_i
        beta = torch.sum(r_next * r_next) / (rr + EPS)
        new_x.append(x_next)
        new_r.append(r_next)
        new_d.append(r_next + beta * d_i)
    return tuple(new_x), tuple(new_r), tuple(new_d)


def _global_step(x: Vectors, r: Vectors, d: Vectors, ad: Vectors) -> tuple[Vectors, Vectors, Vectors]:
    """One textbook CG step: one α and one β over the concatenated vector (0 where undefined)."""
    rr = _dot(r, r)
    curvature = _dot(d, ad)
    alpha = torch.where(curvature != 0, rr / curvature, torch.zeros_like(rr))
    new_x = tuple(x_i + alpha * d_i for x_i, d_i in zip(x, d))
    new_r = tuple(r_i - alpha * ad_i for r_i, ad_i in zip(r, ad))
    rr_next = _dot(new_r, new_r)
    beta = torch.where(rr != 0, rr_next / rr, torch.zeros_like(rr))
    new_d = tuple(r_i + beta * d_i for r_i, d_i in zip(new_r, d))
    return new_x, new_r, new_d


def neumann(
    matvec: Matvec,
    b: Sequence[Tensor],
    *,
    iterations: int,
    scale: float,
    tol: float = 0.0,
    x0: Sequence[Tensor] | None = None,
) -> SolveResult:
    """Truncated Neumann series x = x0 + c Σ_{k<K} (I − cA)^k r0 with c = ``scale``, K = ``iterations``.

    Converges when 0 < c < 2/λ_max(A); each of the K matvecs also yields the exact residual (I − cA)^k r0.
    """
    b = tuple(t.detach() for t in b)
    b_norm = _norm(b)
    x, term = _initial_residual(matvec, b, x0)
    total = tuple(torch.zeros_like(t) for t in b)
    used = 0
    if tol > 0 and _relative(term, b_norm) <= tol:
        return SolveResult(_finite(x), 0, _relative(term, b_norm))
    for _ in range(iterations):
        total = tuple(s + t for s, t in zip(total, term))
        product = matvec(term)
        term = tuple(t - scale * p for t, p in zip(term, product))
        used += 1
        if tol > 0 and _relative(term, b_norm) <= tol:
            break
    solution = tuple(x_i + scale * s for x_i, s in zip(x, total))
    return SolveResult(_finite(solution), used, _relative(term, b_norm))


def _flatten(vectors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in vectors])


def _unflatten(flat: Tensor, like: Sequence[Tensor]) -> Vectors:
    pieces, offset = [], 0
    for t in like:
        pieces.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return tuple(pieces)


def dense_matrix(matvec: Matvec, like: Sequence[Tensor]) -> Tensor:
    """Materialise the operator as an n × n matrix by applying it to the n unit vectors (tiny n only)."""
    size = sum(t.numel() for t in like)
    reference = like[0]
    columns = []
    for index in range(size):
        unit = torch.zeros(size, dtype=reference.dtype, device=reference.device)
        unit[index] = 1
        columns.append(_flatten(matvec(_unflatten(unit, like))))
    return torch.stack(columns, dim=1)


def exact(
    matvec: Matvec,
    b: Sequence[Tensor],
    *,
    iterations: int = 0,
    tol: float = 0.0,
    x0: Sequence[Tensor] | None = None,
) -> SolveResult:
    """Materialise A (n matvecs) and solve densely in float64; for tests and diagnostics on tiny models.

    ``iterations``, ``tol`` and ``x0`` are accepted for the shared signature and ignored.
    """
    b = tuple(t.detach() for t in b)
    matrix = dense_matrix(matvec, b).double()
    rhs = _flatten(b).double()
    solution = torch.linalg.solve(matrix, rhs)
    rhs_norm = float(rhs.norm())
    residual = float((rhs - matrix @ solution).norm())
    relative = residual / rhs_norm if rhs_norm > 0 else residual
    return SolveResult(_finite(_unflatten(solution, b)), matrix.shape[0], relative)


def identity(
    matvec: Matvec,
    b: Sequence[Tensor],
    *,
    iterations: int = 0,
    tol: float = 0.0,
    x0: Sequence[Tensor] | None = None,
) -> SolveResult:
    """x = b: ignores the Hessian (first-order ablation); spends no matvec, so the residual is NaN."""
    return SolveResult(tuple(t.detach().clone() for t in b), 0, math.nan)


SOLVERS: dict[str, Callable[..., SolveResult]] = {
    "cg": cg,
    "neumann": neumann,
    "exact": exact,
    "identity": identity,
}
