"""Spectra of curvature operators given only as matvecs (docs/method.md: Indefinite systems).

- ``lanczos``: Ritz values and vectors with full reorthogonalisation, scalars accumulated in float64.
- ``spectrum_summary``: λ_min, λ_max and whether I + H/μ is positive definite (μ = λ + δ).
- ``build_lowrank``: H ≈ U Θ Uᵀ from a fixed number of products (Lanczos, or a Nyström sketch for PSD
  curvature), whose ``inverse`` applies (I + H/μ)⁻¹ with no further products.
- ``adaptive_damping``: the smallest δ that makes I + H/(λ+δ) positive definite with a margin.

Vectors are tuples of tensors shaped like the parameters; a matvec maps such a tuple to another.
Under torch.distributed the matvec is expected to return rank-averaged products and every rank to
pass the same ``generator`` seed, so every rank builds the same basis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Vectors = tuple[Tensor, ...]
Matvec = Callable[[Vectors], Vectors]

BREAKDOWN = 1e-10
NEGATIVE_MODES = ("clip", "abs", "keep")
LOWRANK_METHODS = ("lanczos", "nystrom")


def flatten(vectors: Sequence[Tensor]) -> Tensor:
    """One flat tensor holding every tensor of ``vectors`` in order."""
    return torch.cat([t.reshape(-1) for t in vectors])


def unflatten(flat: Tensor, like: Sequence[Tensor] | Sequence[torch.Size]) -> Vectors:
    """Split ``flat`` into tensors shaped like ``like``: tensors (their dtype is taken too) or sizes."""
    pieces, offset = [], 0
    for item in like:
        if isinstance(item, Tensor):
            count, shape = item.numel(), item.shape
            piece = flat[offset : offset + count].reshape(shape).to(item.dtype)
        else:
            shape = torch.Size(item)
            count = shape.numel()
            piece = flat[offset : offset + count].reshape(shape)
        pieces.append(piece)
        offset += count
    if offset != flat.numel():
        raise ValueError(f"a flat vector of {flat.numel()} entries does not fit shapes totalling {offset}")
    return tuple(pieces)


def _dot64(a: Tensor, b: Tensor) -> float:
    """Inner product of two flat tensors, accumulated in float64 (without a float64 copy of either)."""
    if a.dtype == torch.float64:
        return float(torch.dot(a, b))
    return float(torch.sum(a * b, dtype=torch.float64))


@dataclass
class LanczosResult:
    """Ritz pairs of a symmetric operator from m Lanczos steps (m < steps after an early breakdown).

    T = diag(alphas) + diag(betas, ±1) is the m × m tridiagonal matrix (``betas`` has m − 1 entries);
    ``ritz_values`` are its eigenvalues, ascending; ``ritz_vectors`` rows are the matching orthonormal
    vectors in parameter space (flat, in the dtype of the input vectors).
    """

    ritz_values: Tensor
    ritz_vectors: Tensor | None
    alphas: Tensor
    betas: Tensor
    products: int


def lanczos(
    matvec: Matvec,
    like: Sequence[Tensor],
    *,
    steps: int,
    start: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    vectors: bool = True,
) -> LanczosResult:
    """``steps`` Lanczos steps on ``matvec`` with full reorthogonalisation (Gram–Schmidt twice).

    α and β are accumulated in float64; the vectors and the reorthogonalisation stay in the dtype of
    ``like`` (all the precision a basis stored in it holds).

    One product per step; the run stops early when β falls below 1e-10 · max|α| (100 ε · max|α| for
    vectors whose precision ε cannot resolve that, e.g. float32): the Krylov space is then invariant and
    the Ritz values found are eigenvalues; going on would only feed rounding noise through the operator.
    The start vector is ``start``, else random normal from ``generator``.
    """
    if steps < 1:
        raise ValueError(f"Lanczos needs steps >= 1, got {steps}")
    like = tuple(like)
    reference = like[0]
    size = sum(t.numel() for t in like)
    steps = min(steps, size)
    if start is None:
        first = torch.randn(size, generator=generator, dtype=reference.dtype, device=reference.device)
    else:
        first = flatten(tuple(start)).detach().to(reference.dtype)
    first_norm = math.sqrt(_dot64(first, first))
    if not first_norm > 0:
        raise ValueError("the Lanczos start vector must be non-zero and finite")
    breakdown = max(BREAKDOWN, 100 * torch.finfo(reference.dtype).eps)
    basis = torch.empty(steps, size, dtype=reference.dtype, device=reference.device)
    basis[0] = (first.double() / first_norm).to(reference.dtype)
    alphas: list[float] = []
    betas: list[float] = []
    for step in range(steps):
        product = flatten(matvec(unflatten(basis[step], like))).detach().to(reference.dtype)
        alpha = _dot64(basis[step], product)
        alphas.append(alpha)
        product.sub_(basis[step], alpha=alpha)
        if step > 0:
            product.sub_(basis[step - 1], alpha=betas[-1])
        for _ in range(2):
            rows = basis[: step + 1]
            product.sub_((rows @ product) @ rows)
        beta = math.sqrt(_dot64(product, product))
        if step + 1 == steps or beta <= breakdown * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        basis[step + 1] = product.div_(beta)
    count = len(alphas)
    alpha_tensor = torch.tensor(alphas, dtype=torch.float64)
    beta_tensor = torch.tensor(betas, dtype=torch.float64)
    tridiagonal = torch.diag(alpha_tensor)
    if count > 1:
        tridiagonal += torch.diag(beta_tensor, 1) + torch.diag(beta_tensor, -1)
    values, eigenvectors = torch.linalg.eigh(tridiagonal)
    ritz_vectors = None
    if vectors:
        ritz_vectors = eigenvectors.T.to(device=basis.device, dtype=basis.dtype) @ basis[:count]
    return LanczosResult(values, ritz_vectors, alpha_tensor, beta_tensor, count)


@dataclass
class SpectrumSummary:
    """Extreme Ritz values of H and whether the BiSSL system I + H/μ is positive definite."""

    lambda_min: float
    lambda_max: float
    below: int
    positive_definite: bool
    mu: float


def spectrum_summary(result: LanczosResult, mu: float) -> SpectrumSummary:
    """λ_min, λ_max, the number of Ritz values below −μ, and λ_min > −μ (I + H/μ positive definite)."""
    values = result.ritz_values
    lambda_min = float(values[0])
    return SpectrumSummary(
        lambda_min=lambda_min,
        lambda_max=float(values[-1]),
        below=int((values < -mu).sum()),
        positive_definite=lambda_min > -mu,
        mu=mu,
    )


@dataclass
class LowRankCurvature:
    """H ≈ U diag(values) Uᵀ with orthonormal rows U = ``basis`` ([k, n], flat parameter space).

    ``values`` estimate eigenvalues of H itself (not of I + H/μ); ``like`` are the parameter shapes;
    ``products`` the matvecs spent building it.
    """

    basis: Tensor
    values: Tensor
    like: tuple[torch.Size, ...]
    products: int

    def system_values(self, mu: float, negative: str = "clip") -> Tensor:
        """The θ used by ``inverse``: values ≤ −μ clipped to 0, replaced by |θ|, or kept (float64)."""
        if negative not in NEGATIVE_MODES:
            raise ValueError(f"negative={negative!r} is not one of {', '.join(NEGATIVE_MODES)}")
        if not mu > 0:
            raise ValueError(f"the low-rank inverse needs mu = lam + damping > 0, got {mu}")
        theta = self.values.clone()
        below = theta <= -mu
        if negative == "clip":
            theta[below] = 0.0
        elif negative == "abs":
            theta[below] = theta[below].abs()
        else:
            theta[(theta + mu).abs() <= 1e-12 * mu] = 0.0
        return theta

    def inverse(self, v: Sequence[Tensor], mu: float, negative: str = "clip") -> Vectors:
        """(I + H/μ)⁻¹ v ≈ v − U diag(θ/(μ+θ)) Uᵀ v, with θ ≤ −μ treated by ``negative``."""
        theta = self.system_values(mu, negative)
        weights = theta / (mu + theta)
        flat = flatten(tuple(t.detach() for t in v)).to(self.basis.dtype)
        coordinates = (self.basis @ flat).double()
        correction = (weights.to(coordinates.device) * coordinates).to(self.basis.dtype) @ self.basis
        return unflatten(flat - correction, self.like)


def _nystrom(
    matvec: Matvec, like: Sequence[Tensor], rank: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Randomised Nyström approximation A ≈ U diag(Λ) Uᵀ of a PSD operator from ``rank`` products.

    Stable form: a small shift ν keeps the core Cholesky factor defined and is removed afterwards.
    """
    reference = like[0]
    size = sum(t.numel() for t in like)
    sketch = torch.randn(size, rank, generator=generator, dtype=reference.dtype, device=reference.device)
    test_matrix, _ = torch.linalg.qr(sketch)
    images = torch.stack(
        [flatten(matvec(unflatten(test_matrix[:, j].contiguous(), like))).detach() for j in range(rank)],
        dim=1,
    )
    shift = math.sqrt(size) * torch.finfo(images.dtype).eps * float(torch.linalg.matrix_norm(images, ord=2))
    shifted = images + shift * test_matrix
    core = (test_matrix.T @ shifted).double()
    core = (core + core.T) / 2
    factor, info = torch.linalg.cholesky_ex(core)
    if int(info) != 0:
        raise ValueError(
            "the Nyström sketch needs PSD curvature (its core is not positive definite); "
            "use method='lanczos' or Gauss–Newton curvature"
        )
    triangular = torch.linalg.solve_triangular(factor.to(images.dtype), shifted.T, upper=False)
    q, r = torch.linalg.qr(triangular.T)
    left, singular, _ = torch.linalg.svd(r.double())
    values = torch.clamp(singular**2 - shift, min=0.0)
    basis = (q @ left.to(q.dtype)).T.contiguous()
    return basis, values


def build_lowrank(
    matvec: Matvec,
    like: Sequence[Tensor],
    *,
    rank: int,
    method: str = "lanczos",
    generator: torch.Generator | None = None,
) -> LowRankCurvature:
    """H ≈ U Θ Uᵀ from ``rank`` products (fewer only if Lanczos finds an invariant subspace first).

    ``method="lanczos"`` takes Ritz pairs (any symmetric H); ``"nystrom"`` a randomised Nyström sketch
    (PSD curvature only, e.g. Gauss–Newton; it raises ValueError when the sketch shows otherwise).
    """
    if rank < 1:
        raise ValueError(f"the low-rank curvature needs rank >= 1, got {rank}")
    if method not in LOWRANK_METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(LOWRANK_METHODS)}")
    like = tuple(t.detach() for t in like)
    shapes = tuple(t.shape for t in like)
    size = sum(t.numel() for t in like)
    rank = min(rank, size)
    if method == "lanczos":
        result = lanczos(matvec, like, steps=rank, generator=generator)
        assert result.ritz_vectors is not None
        return LowRankCurvature(result.ritz_vectors, result.ritz_values, shapes, result.products)
    basis, values = _nystrom(matvec, like, rank, generator)
    return LowRankCurvature(basis, values, shapes, rank)


def adaptive_damping(lambda_min: float, lam: float, damping: float, margin: float) -> float:
    """The smallest δ' ≥ ``damping`` with 1 + λ_min/(lam + δ') ≥ ``margin``, i.e. the smallest eigenvalue
    of I + H/(lam + δ') at least ``margin`` by the estimate λ_min (0 < margin < 1)."""
    if not 0 < margin < 1:
        raise ValueError(f"the damping margin must lie in (0, 1), got {margin}")
    if not math.isfinite(lambda_min):
        raise ValueError(f"adaptive damping needs a finite λ_min estimate, got {lambda_min}")
    if not lam + damping > 0:
        raise ValueError(f"lam + damping must be positive, got {lam + damping}")

    def holds(delta: float) -> bool:
        return 1 + lambda_min / (lam + delta) >= margin

    if holds(damping):
        return damping
    delta = max(damping, -lambda_min / (1 - margin) - lam)
    while not holds(delta):
        delta = math.nextafter(delta, math.inf)
    return delta
