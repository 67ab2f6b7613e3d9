"""Lanczos, spectrum summaries, low-rank curvature and adaptive damping against dense linear algebra."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from bissl.bilevel.spectrum import (
    LowRankCurvature,
    adaptive_damping,
    build_lowrank,
    flatten,
    lanczos,
    spectrum_summary,
    unflatten,
)

SHAPES = (torch.Size((3, 4)), torch.Size((5,)), torch.Size((2, 2, 3)))
SIZE = 12 + 5 + 12


def _like(dtype: torch.dtype = torch.double) -> tuple[Tensor, ...]:
    return tuple(torch.zeros(shape, dtype=dtype) for shape in SHAPES)


def _symmetric(eigenvalues: Tensor, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.double, generator=generator))
    return q @ torch.diag(eigenvalues.double()) @ q.T


def _operator(matrix: Tensor) -> tuple[list[int], Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]]:
    calls: list[int] = []

    def matvec(vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        calls.append(1)
        return unflatten(matrix.to(vectors[0].dtype) @ flatten(vectors), vectors)

    return calls, matvec


def test_flatten_and_unflatten_round_trip_with_tensors_and_sizes() -> None:
    vectors = tuple(torch.randn(shape) for shape in SHAPES)
    flat = flatten(vectors)
    assert flat.shape == (SIZE,)
    for like in (vectors, SHAPES):
        back = unflatten(flat, like)
        assert all(torch.equal(a, b) for a, b in zip(back, vectors))
    as_double = unflatten(flat, _like())
    assert all(t.dtype == torch.double for t in as_double)
    with pytest.raises(ValueError, match="does not fit"):
        unflatten(torch.zeros(SIZE + 1), SHAPES)


def test_lanczos_extremes_match_eigvalsh_and_vectors_are_orthonormal() -> None:
    generator = torch.Generator().manual_seed(1)
    raw = torch.randn(SIZE, SIZE, dtype=torch.double, generator=generator)
    matrix = (raw + raw.T) / 2
    exact = torch.linalg.eigvalsh(matrix)
    calls, matvec = _operator(matrix)
    result = lanczos(matvec, _like(), steps=SIZE, generator=torch.Generator().manual_seed(2))
    assert result.products == len(calls) == result.ritz_values.numel()
    assert result.ritz_values.dtype == torch.float64
    assert torch.all(result.ritz_values[1:] >= result.ritz_values[:-1])
    assert abs(float(result.ritz_values[0] - exact[0])) < 1e-8
    assert abs(float(result.ritz_values[-1] - exact[-1])) < 1e-8
    assert result.ritz_vectors is not None
    vectors = result.ritz_vectors
    gram = vectors @ vectors.T
    assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.double), atol=1e-10)
    residual = vectors @ matrix - result.ritz_values[:, None] * vectors
    assert float(residual.norm(dim=1).max()) < 1e-8
    tridiagonal = torch.diag(result.alphas) + torch.diag(result.betas, 1) + torch.diag(result.betas, -1)
    assert torch.allclose(torch.linalg.eigvalsh(tridiagonal), result.ritz_values)


def test_lanczos_extremes_converge_long_before_n_steps_on_a_spread_spectrum() -> None:
    size = 200
    eigenvalues = torch.cat(
        [torch.tensor([-30.0, -12.0]), torch.linspace(0, 1, size - 4), torch.tensor([400.0, 760.0])]
    )
    matrix = _symmetric(eigenvalues, seed=3)
    like = (torch.zeros(size, dtype=torch.double),)
    _, matvec = _operator(matrix)
    result = lanczos(matvec, like, steps=40, generator=torch.Generator().manual_seed(4), vectors=False)
    assert result.ritz_vectors is None and result.products == 40
    assert float(result.ritz_values[0]) == pytest.approx(-30.0, abs=1e-8)
    assert float(result.ritz_values[1]) == pytest.approx(-12.0, abs=1e-8)
    assert float(result.ritz_values[-1]) == pytest.approx(760.0, abs=1e-8)
    summary = spectrum_summary(result, mu=10.001)
    assert summary.lambda_min == pytest.approx(-30.0, abs=1e-8)
    assert summary.lambda_max == pytest.approx(760.0, abs=1e-8)
    assert summary.below == 2 and not summary.positive_definite and summary.mu == 10.001
    assert spectrum_summary(result, mu=31.0).positive_definite
    assert spectrum_summary(result, mu=31.0).below == 0


def test_lanczos_stops_early_on_a_low_rank_matrix() -> None:
    eigenvalues = torch.zeros(SIZE, dtype=torch.double)
    eigenvalues[:4] = torch.tensor([-3.0, 1.0, 2.0, 9.0])
    matrix = _symmetric(eigenvalues, seed=5)
    calls, matvec = _operator(matrix)
    result = lanczos(matvec, _like(), steps=20, generator=torch.Generator().manual_seed(6))
    # The Krylov space of a rank-4 matrix has dimension at most 5 (the start vector's null-space part).
    assert result.products == len(calls) <= 5
    assert result.betas.numel() == result.products - 1
    nonzero = result.ritz_values[result.ritz_values.abs() > 1e-8]
    assert torch.allclose(nonzero, torch.tensor([-3.0, 1.0, 2.0, 9.0], dtype=torch.double), atol=1e-10)


def test_lanczos_in_float32_stops_when_a_low_rank_krylov_space_is_exhausted() -> None:
    size = 3000
    basis, _ = torch.linalg.qr(
        torch.randn(size, 6, dtype=torch.double, generator=torch.Generator().manual_seed(20))
    )
    eigenvalues = torch.tensor([1500.0, 900.0, 300.0, 40.0, 2.0, 0.5], dtype=torch.double)
    matrix = ((basis * eigenvalues) @ basis.T).float()
    noise = torch.Generator().manual_seed(21)

    def noisy(vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        product = matrix @ vectors[0]
        return (product + 1e-6 * product.norm() * torch.randn(size, generator=noise) / size**0.5,)

    result = lanczos(noisy, (torch.zeros(size),), steps=20, generator=torch.Generator().manual_seed(22))
    assert result.products <= 8
    assert float(result.ritz_values.max()) == pytest.approx(1500.0, rel=1e-4)
    assert float(result.ritz_values.min()) > -1e-2


def test_lanczos_from_a_given_start_and_in_float32() -> None:
    matrix = _symmetric(torch.linspace(-2, 5, SIZE), seed=7)
    _, matvec = _operator(matrix)
    start = unflatten(torch.ones(SIZE, dtype=torch.double), SHAPES)
    first = lanczos(matvec, _like(), steps=3, start=start)
    again = lanczos(matvec, _like(), steps=3, start=start)
    assert torch.equal(first.ritz_values, again.ritz_values)
    assert float(first.alphas[0]) == pytest.approx(
        float(torch.ones(SIZE, dtype=torch.double) @ matrix @ torch.ones(SIZE, dtype=torch.double)) / SIZE
    )
    single = lanczos(matvec, _like(torch.float32), steps=SIZE, generator=torch.Generator().manual_seed(8))
    assert single.ritz_vectors is not None and single.ritz_vectors.dtype == torch.float32
    assert single.ritz_values.dtype == torch.float64
    assert float(single.ritz_values[0]) == pytest.approx(-2.0, abs=1e-4)
    with pytest.raises(ValueError, match="steps"):
        lanczos(matvec, _like(), steps=0)
    with pytest.raises(ValueError, match="non-zero"):
        lanczos(matvec, _like(), steps=2, start=_like())


def _dense_inverse(matrix: Tensor, mu: float) -> Tensor:
    return torch.linalg.inv(torch.eye(matrix.shape[0], dtype=torch.double) + matrix / mu)


def test_lowrank_with_full_rank_is_the_dense_solve() -> None:
    matrix = _symmetric(torch.linspace(-5, 50, SIZE), seed=9)
    _, matvec = _operator(matrix)
    mu = 10.001
    curvature = build_lowrank(matvec, _like(), rank=SIZE + 5, generator=torch.Generator().manual_seed(10))
    assert curvature.products <= SIZE and curvature.basis.shape[0] == curvature.values.numel()
    v = torch.randn(SIZE, dtype=torch.double)
    x = flatten(curvature.inverse(unflatten(v, SHAPES), mu))
    assert torch.allclose(
        x, torch.linalg.solve(torch.eye(SIZE, dtype=torch.double) + matrix / mu, v), atol=1e-9
    )


def test_lowrank_below_full_rank_is_the_dense_formula_for_each_negative_mode() -> None:
    eigenvalues = torch.linspace(-25, 60, SIZE)
    matrix = _symmetric(eigenvalues, seed=11)
    _, matvec = _operator(matrix)
    mu = 10.0
    curvature = build_lowrank(matvec, _like(), rank=8, generator=torch.Generator().manual_seed(12))
    assert curvature.products == 8 and curvature.basis.shape == (8, SIZE)
    u, theta = curvature.basis, curvature.values
    assert torch.allclose(u @ u.T, torch.eye(8, dtype=torch.double), atol=1e-10)
    assert float(theta.min()) < -mu
    v = torch.randn(SIZE, dtype=torch.double)
    treated = {
        "clip": torch.where(theta <= -mu, torch.zeros_like(theta), theta),
        "abs": torch.where(theta <= -mu, theta.abs(), theta),
        "keep": theta,
    }
    for negative, values in treated.items():
        expected = v - u.T @ (values / (mu + values) * (u @ v))
        x = flatten(curvature.inverse(unflatten(v, SHAPES), mu, negative))
        assert torch.allclose(x, expected, atol=1e-12), negative
        # Woodbury: (I + U Θ Uᵀ/μ)⁻¹ as a dense matrix gives the same vector.
        dense = torch.eye(SIZE, dtype=torch.double) + u.T @ torch.diag(values) @ u / mu
        assert torch.allclose(x, torch.linalg.solve(dense, v), atol=1e-9), negative
    clipped = flatten(curvature.inverse(unflatten(v, SHAPES), mu, "clip"))
    kept = flatten(curvature.inverse(unflatten(v, SHAPES), mu, "keep"))
    assert not torch.allclose(clipped, kept)
    with pytest.raises(ValueError, match="negative"):
        curvature.inverse(unflatten(v, SHAPES), mu, "flip")


def test_keep_clips_a_value_at_minus_mu_instead_of_dividing_by_zero() -> None:
    basis = torch.eye(2, SIZE, dtype=torch.double)
    curvature = LowRankCurvature(basis, torch.tensor([-10.0, 5.0], dtype=torch.double), SHAPES, 0)
    v = torch.ones(SIZE, dtype=torch.double)
    x = flatten(curvature.inverse(unflatten(v, SHAPES), 10.0, "keep"))
    assert torch.isfinite(x).all()
    assert float(x[0]) == 1.0
    assert float(x[1]) == pytest.approx(10.0 / 15.0)


def test_nystrom_is_exact_on_a_psd_matrix_of_rank_at_most_k() -> None:
    eigenvalues = torch.zeros(SIZE, dtype=torch.double)
    eigenvalues[:5] = torch.tensor([0.5, 2.0, 3.0, 40.0, 700.0])
    matrix = _symmetric(eigenvalues, seed=13)
    calls, matvec = _operator(matrix)
    curvature = build_lowrank(
        matvec, _like(), rank=7, method="nystrom", generator=torch.Generator().manual_seed(14)
    )
    assert curvature.products == len(calls) == 7
    u, theta = curvature.basis, curvature.values
    assert torch.allclose(u @ u.T, torch.eye(7, dtype=torch.double), atol=1e-10)
    assert torch.allclose(u.T @ torch.diag(theta) @ u, matrix, atol=1e-9)
    mu = 10.001
    v = torch.randn(SIZE, dtype=torch.double)
    x = flatten(curvature.inverse(unflatten(v, SHAPES), mu))
    assert torch.allclose(x, _dense_inverse(matrix, mu) @ v, atol=1e-9)


def test_nystrom_refuses_indefinite_curvature() -> None:
    matrix = _symmetric(torch.linspace(-50, 5, SIZE), seed=15)
    _, matvec = _operator(matrix)
    with pytest.raises(ValueError, match="PSD"):
        build_lowrank(matvec, _like(), rank=6, method="nystrom", generator=torch.Generator().manual_seed(16))
    with pytest.raises(ValueError, match="rank"):
        build_lowrank(matvec, _like(), rank=0)
    with pytest.raises(ValueError, match="method"):
        build_lowrank(matvec, _like(), rank=2, method="svd")


def test_adaptive_damping_by_hand() -> None:
    # 1 + λ_min/(λ + δ') ≥ m  ⇔  λ + δ' ≥ |λ_min|/(1 − m) for λ_min < 0.
    assert adaptive_damping(-23.0, 1e-3, 10.0, 0.5) == pytest.approx(46.0 - 1e-3, rel=1e-12)
    assert adaptive_damping(-105.0, 1e-3, 10.0, 0.1) == pytest.approx(105.0 / 0.9 - 1e-3, rel=1e-12)
    assert adaptive_damping(-2.0, 1e-3, 10.0, 0.5) == 10.0
    assert adaptive_damping(3.0, 1e-3, 10.0, 0.9) == 10.0
    for lambda_min, margin in ((-23.0, 0.5), (-760.0, 0.01), (-10.001, 0.3)):
        delta = adaptive_damping(lambda_min, 1e-3, 10.0, margin)
        assert 1 + lambda_min / (1e-3 + delta) >= margin
        assert 1 + lambda_min / (1e-3 + math.nextafter(delta, 0.0)) < margin or delta == 10.0
    for margin in (0.0, 1.0):
        with pytest.raises(ValueError, match="margin"):
            adaptive_damping(-1.0, 1e-3, 10.0, margin)
    with pytest.raises(ValueError, match="finite"):
        adaptive_damping(math.nan, 1e-3, 10.0, 0.5)
