"""Linear solvers for A x = b where A is symmetric and given only as a matvec (docs/method.md: Conjugate gradient, Indefinite systems).

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

from bissl.bilevel.spectrum import NEGATIVE_MODES, LowRankCurvature, Matvec, Vectors, flatten, unflatten

Preconditioner = Callable[[Vectors], Vectors]
REFINE_MODES = ("none", "cg", "minres")

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
    preconditioner: Preconditioner | None = None,
) -> SolveResult:
    """Conjugate gradient for SPD A: ``layerwise=True`` is the reference's per-tensor step sizes
    (docs/method.md: Conjugate gradient), ``False`` textbook CG; ``tol > 0`` stops once ‖r‖/‖b‖ ≤ tol.

    ``preconditioner`` (an SPD M⁻¹, textbook CG only) gives preconditioned CG. The residual is the
    recursion's r_k (for layerwise CG an estimate, not ‖b − A x_k‖).
    """
    if preconditioner is not None:
        if layerwise:
            raise ValueError("a preconditioner needs textbook CG (layerwise=False)")
        return _preconditioned_cg(
            matvec, b, iterations=iterations, tol=tol, x0=x0, preconditioner=preconditioner
        )
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


def _preconditioned_cg(
    matvec: Matvec,
    b: Sequence[Tensor],
    *,
    iterations: int,
    tol: float,
    x0: Sequence[Tensor] | None,
    preconditioner: Preconditioner,
) -> SolveResult:
    """Textbook CG on A x = b preconditioned by the SPD M⁻¹ = ``preconditioner`` (scalars in float64)."""
    b = tuple(t.detach() for t in b)
    b_norm = _norm(b)
    x, residual = _initial_residual(matvec, b, x0)
    used = 0
    if tol > 0 and _relative(residual, b_norm) <= tol:
        return SolveResult(_finite(x), 0, _relative(residual, b_norm))
    preconditioned = preconditioner(residual)
    direction = tuple(t.clone() for t in preconditioned)
    rz = float(_dot(residual, preconditioned))
    for _ in range(iterations):
        product = matvec(direction)
        used += 1
        curvature = float(_dot(direction, product))
        if curvature == 0 or rz == 0:
            break
        alpha = rz / curvature
        x = tuple(x_i + alpha * d_i for x_i, d_i in zip(x, direction))
        residual = tuple(r_i - alpha * p_i for r_i, p_i in zip(residual, product))
        if tol > 0 and _relative(residual, b_norm) <= tol:
            break
        preconditioned = preconditioner(residual)
        rz_next = float(_dot(residual, preconditioned))
        beta = rz_next / rz
        rz = rz_next
        direction = tuple(z_i + beta * d_i for z_i, d_i in zip(preconditioned, direction))
    return SolveResult(_finite(x), used, _relative(residual, b_norm))


def _fdot(a: Tensor, b: Tensor) -> float:
    """Inner product of two flat tensors as a Python float."""
    return float(torch.dot(a, b))


def _combine(
    older: Tensor, prev: Tensor, vector: Tensor, epsilon: float, delta: float, gamma: float
) -> Tensor:
    """(vector − ε older − δ prev) / γ, computed in place in ``older``'s storage."""
    return older.mul_(-epsilon).add_(prev, alpha=-delta).add_(vector).div_(gamma)


def minres(
    matvec: Matvec,
    b: Sequence[Tensor],
    *,
    iterations: int,
    tol: float = 0.0,
    x0: Sequence[Tensor] | None = None,
    preconditioner: Preconditioner | None = None,
) -> SolveResult:
    """MINRES (Paige–Saunders) for symmetric, possibly indefinite A: x_k minimises ‖b − A x‖ over the
    Krylov space (the M⁻¹-weighted norm with an SPD ``preconditioner`` M⁻¹), so the residual never grows.

    One matvec per iteration; the scalar recurrences run in float64, dot products in the vectors'
    precision, vector updates in place. ``residual_norm`` is ‖b − A x‖/‖b‖ from the recursion (φ̄ without
    a preconditioner, an updated residual vector with one), exact in exact arithmetic.
    """
    b = tuple(t.detach() for t in b)
    like = b
    b_norm = _norm(b)
    x_start, r_start = _initial_residual(matvec, b, x0)
    x = flatten(x_start)
    residual = flatten(r_start)

    def apply(vector: Tensor) -> Tensor:
        return flatten(matvec(unflatten(vector, like)))

    def precondition(vector: Tensor) -> Tensor:
        if preconditioner is None:
            return vector
        return flatten(preconditioner(unflatten(vector, like)))

    def relative(norm: float) -> float:
        return norm / b_norm if b_norm > 0 else norm

    start_norm = math.sqrt(_fdot(residual, residual))
    current = relative(start_norm)
    if (tol > 0 and current <= tol) or start_norm == 0 or iterations < 1:
        return SolveResult(_finite(unflatten(x, like)), 0, current)

    lanczos_prev = residual.clone()
    lanczos_curr = residual.clone()
    z = precondition(residual)
    beta = math.sqrt(_fdot(residual, z))
    if not beta > 0:
        raise ValueError("the MINRES preconditioner must be positive definite")
    beta_prev = 0.0
    cosine, sine = -1.0, 0.0
    delta_bar, epsilon = 0.0, 0.0
    phi_bar = beta
    direction = torch.zeros_like(x)
    direction_prev = torch.zeros_like(x)
    tracked = preconditioner is not None
    image = torch.zeros_like(x)
    image_prev = torch.zeros_like(x)
    floor = torch.finfo(x.dtype).eps if x.is_floating_point() else 0.0
    used = 0
    for step in range(iterations):
        basis_vector = z / beta
        product = apply(basis_vector)
        used += 1
        raw_product = product.clone() if tracked else product
        if step > 0:
            product.sub_(lanczos_prev, alpha=beta / beta_prev)
        alpha = _fdot(basis_vector, product)
        product.sub_(lanczos_curr, alpha=alpha / beta)
        lanczos_prev, lanczos_curr = lanczos_curr, product
        z = precondition(lanczos_curr)
        beta_prev = beta
        beta_squared = _fdot(lanczos_curr, z)
        if beta_squared < 0:
            raise ValueError("the MINRES preconditioner must be positive definite")
        beta = math.sqrt(beta_squared)
        epsilon_prev = epsilon
        delta = cosine * delta_bar + sine * alpha
        gamma_bar = sine * delta_bar - cosine * alpha
        epsilon = sine * beta
        delta_bar = -cosine * beta
        gamma = max(math.hypot(gamma_bar, beta), 1e-300)
        cosine, sine = gamma_bar / gamma, beta / gamma
        phi = cosine * phi_bar
        phi_bar = sine * phi_bar
        # w_k = (v_k − ε w_{k−2} − δ w_{k−1}) / γ, written over w_{k−2}: two buffers serve the recurrence.
        direction_older, direction_prev = direction_prev, direction
        direction = _combine(direction_older, direction_prev, basis_vector, epsilon_prev, delta, gamma)
        x.add_(direction, alpha=phi)
        if tracked:
            image_older, image_prev = image_prev, image
            image = _combine(image_older, image_prev, raw_product, epsilon_prev, delta, gamma)
            residual.sub_(image, alpha=phi)
            current = relative(math.sqrt(_fdot(residual, residual)))
        else:
            current = relative(phi_bar)
        if current <= max(tol, floor) or beta <= 1e-13 * (abs(alpha) + beta_prev):
            break
    return SolveResult(_finite(unflatten(x, like)), used, current)


def true_residual(matvec: Matvec, b: Sequence[Tensor], x: Sequence[Tensor]) -> float:
    """‖b − A x‖ / ‖b‖ (‖b − A x‖ when b = 0), spending one matvec."""
    b = tuple(t.detach() for t in b)
    product = matvec(tuple(t.detach() for t in x))
    return _relative(tuple(bi - pi for bi, pi in zip(b, product)), _norm(b))


def lowrank(
    matvec: Matvec,
    b: Sequence[Tensor],
    *,
    iterations: int = 0,
    tol: float = 0.0,
    x0: Sequence[Tensor] | None = None,
    curvature: LowRankCurvature,
    mu: float,
    negative: str = "clip",
    refine: str = "none",
) -> SolveResult:
    """(I + H/μ)⁻¹ b from a low-rank H ≈ U Θ Uᵀ built once per upper phase (docs/method.md: Indefinite systems).

    ``refine="none"`` applies ``curvature.inverse`` and spends no matvec (residual NaN; ``iterations``,
    ``tol`` and ``x0`` are ignored). ``"cg"``/``"minres"`` run ``iterations`` of that solver on the
    system ``matvec``, from ``x0`` or else the low-rank solution, preconditioned by the low-rank
    inverse (deflation), with θ ≤ −μ clipped ("keep" becomes "clip") so the preconditioner is SPD;
    the start costs one extra matvec, not counted in ``iterations`` (as for any x0).
    """
    if refine not in REFINE_MODES:
        raise ValueError(f"refine={refine!r} is not one of {', '.join(REFINE_MODES)}")
    if negative not in NEGATIVE_MODES:
        raise ValueError(f"negative={negative!r} is not one of {', '.join(NEGATIVE_MODES)}")
    b = tuple(t.detach() for t in b)
    if refine == "none":
        return SolveResult(_finite(_cast(curvature.inverse(b, mu, negative), b)), 0, math.nan)
    spd_negative = negative if negative != "keep" else "clip"

    def deflate(vectors: Vectors) -> Vectors:
        return _cast(curvature.inverse(vectors, mu, spd_negative), vectors)

    start = tuple(x0) if x0 is not None else deflate(b)
    if refine == "cg":
        return cg(
            matvec, b, iterations=iterations, tol=tol, x0=start, layerwise=False, preconditioner=deflate
        )
    return minres(matvec, b, iterations=iterations, tol=tol, x0=start, preconditioner=deflate)


def _cast(vectors: Vectors, like: Sequence[Tensor]) -> Vectors:
    """``vectors`` in the dtype and on the device of ``like``."""
    return tuple(v.to(dtype=t.dtype, device=t.device) for v, t in zip(vectors, like))


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


def dense_matrix(matvec: Matvec, like: Sequence[Tensor]) -> Tensor:
    """Materialise the operator as an n × n matrix by applying it to the n unit vectors (tiny n only)."""
    size = sum(t.numel() for t in like)
    reference = like[0]
    columns = []
    for index in range(size):
        unit = torch.zeros(size, dtype=reference.dtype, device=reference.device)
        unit[index] = 1
        columns.append(flatten(matvec(unflatten(unit, like))))
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
    rhs = flatten(b).double()
    solution = torch.linalg.solve(matrix, rhs)
    rhs_norm = float(rhs.norm())
    residual = float((rhs - matrix @ solution).norm())
    relative = residual / rhs_norm if rhs_norm > 0 else residual
    return SolveResult(_finite(unflatten(solution, b)), matrix.shape[0], relative)


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
    "minres": minres,
    "lowrank": lowrank,
}
