"""Solvers against dense linear algebra and against a direct transcription of the layerwise CG (docs/method.md: Conjugate gradient)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from bissl.bilevel.solvers import (
    SOLVERS,
    SolveResult,
    cg,
    exact,
    identity,
    lowrank,
    minres,
    neumann,
    true_residual,
)
from bissl.bilevel.spectrum import build_lowrank

SHAPES = ((3, 4), (5,), (2, 2, 3))
SIZE = 12 + 5 + 12


def _split(flat: Tensor) -> tuple[Tensor, ...]:
    pieces, offset = [], 0
    for shape in SHAPES:
        count = math.prod(shape)
        pieces.append(flat[offset : offset + count].reshape(shape))
        offset += count
    return tuple(pieces)


def _join(vectors: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in vectors])


def _spd(low: float, high: float, size: int = SIZE) -> Tensor:
    """A random symmetric matrix with eigenvalues spread over [low, high]."""
    q, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.double))
    eigenvalues = torch.linspace(low, high, size, dtype=torch.double)
    return q @ torch.diag(eigenvalues) @ q.T


def _operator(matrix: Tensor) -> tuple[list[int], Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]]:
    calls: list[int] = []

    def matvec(vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        calls.append(1)
        return _split(matrix @ _join(vectors))

    return calls, matvec


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def spec_layerwise_cg(matrix: Tensor, b: Tensor, iterations: int) -> list[Tensor]:
    """The layerwise CG written out over index ranges: iterate k = 1..K as flat vectors."""
    ranges, offset = [], 0
    for shape in SHAPES:
        ranges.append(range(offset, offset + math.prod(shape)))
        offset += math.prod(shape)
    x = torch.zeros_like(b)
    r = b.clone()
    d = b.clone()
    iterates = []
    for _ in range(iterations):
        ad = matrix @ d
        x_next, r_next, d_next = x.clone(), r.clone(), d.clone()
        for block in ranges:
            index = torch.tensor(list(block))
            rr = r[index].dot(r[index])
            alpha = rr / (d[index].dot(ad[index]) + 1e-12)
            x_next[index] = x[index] + alpha * d[index]
            r_next[index] = r[index] - alpha * ad[index]
            beta = r_next[index].dot(r_next[index]) / (rr + 1e-12)
            d_next[index] = r_next[index] + beta * d[index]
        x, r, d = x_next, r_next, d_next
        iterates.append(x.clone())
    return iterates


def test_global_cg_reaches_the_dense_solve() -> None:
    for _ in range(3):
        matrix = _spd(0.5, 40.0)
        b = torch.randn(SIZE, dtype=torch.double)
        _, matvec = _operator(matrix)
        result = cg(matvec, _split(b), iterations=3 * SIZE, layerwise=False)
        assert _relative(_join(result.x), torch.linalg.solve(matrix, b)) < 1e-6
        assert result.residual_norm < 1e-6


def test_layerwise_cg_follows_spec_iteration_by_iteration() -> None:
    matrix = _spd(1.0, 12.0)
    b = torch.randn(SIZE, dtype=torch.double)
    _, matvec = _operator(matrix)
    expected = spec_layerwise_cg(matrix, b, 6)
    for k, iterate in enumerate(expected, start=1):
        result = cg(matvec, _split(b), iterations=k)
        assert result.iterations == k
        assert torch.allclose(_join(result.x), iterate, rtol=1e-12, atol=1e-14), k


def test_layerwise_differs_from_global_cg_with_several_tensors_and_matches_it_with_one() -> None:
    matrix = _spd(1.0, 12.0)
    b = torch.randn(SIZE, dtype=torch.double)
    _, matvec = _operator(matrix)
    layerwise = _join(cg(matvec, _split(b), iterations=3).x)
    textbook = _join(cg(matvec, _split(b), iterations=3, layerwise=False).x)
    assert _relative(layerwise, textbook) > 1e-3

    def single(vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (matrix @ vectors[0],)

    one_tensor_layerwise = cg(single, (b,), iterations=3).x[0]
    one_tensor_global = cg(single, (b,), iterations=3, layerwise=False).x[0]
    assert _relative(one_tensor_layerwise, one_tensor_global) < 1e-10


@pytest.mark.parametrize("layerwise", [False, True])
def test_tolerance_stops_early_and_reports_iterations(layerwise: bool) -> None:
    matrix = _spd(1.0, 3.0)
    b = torch.randn(SIZE, dtype=torch.double)
    calls, matvec = _operator(matrix)
    result = cg(matvec, _split(b), iterations=200, tol=1e-4, layerwise=layerwise)
    assert 0 < result.iterations < 200
    assert len(calls) == result.iterations
    assert result.residual_norm <= 1e-4
    fixed = cg(matvec, _split(b), iterations=result.iterations, layerwise=layerwise)
    assert torch.equal(_join(fixed.x), _join(result.x))
    previous = cg(matvec, _split(b), iterations=result.iterations - 1, layerwise=layerwise)
    assert previous.residual_norm > 1e-4
    if not layerwise:
        true_residual = _relative(matrix @ _join(result.x), b)
        assert true_residual == pytest.approx(result.residual_norm, rel=1e-6)


def test_warm_start_from_the_solution_needs_no_iteration() -> None:
    matrix = _spd(1.0, 5.0)
    b = torch.randn(SIZE, dtype=torch.double)
    calls, matvec = _operator(matrix)
    solution = _split(torch.linalg.solve(matrix, b))
    result = cg(matvec, _split(b), iterations=5, tol=1e-8, x0=solution)
    assert result.iterations == 0
    assert len(calls) == 1
    assert torch.allclose(_join(result.x), _join(solution))
    start = _split(torch.randn(SIZE, dtype=torch.double))
    warm = cg(matvec, _split(b), iterations=3 * SIZE, x0=start, layerwise=False)
    assert _relative(_join(warm.x), _join(solution)) < 1e-8


def test_non_finite_results_become_zero() -> None:
    b = _split(torch.ones(SIZE, dtype=torch.double))

    def broken(vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (torch.full_like(vectors[0], math.nan), *vectors[1:])

    for layerwise in (True, False):
        x = cg(broken, b, iterations=2, layerwise=layerwise).x
        assert all(torch.isfinite(t).all() for t in x)
        if layerwise:
            assert torch.equal(x[0], torch.zeros_like(x[0]))
            assert torch.allclose(x[1], torch.ones_like(x[1]))


def test_neumann_converges_below_two_over_lambda_max_and_diverges_above() -> None:
    matrix = _spd(1.0, 5.0)
    b = torch.randn(SIZE, dtype=torch.double)
    _, matvec = _operator(matrix)
    solution = torch.linalg.solve(matrix, b)
    errors = [
        _relative(_join(neumann(matvec, _split(b), iterations=k, scale=0.35).x), solution)
        for k in (5, 20, 150)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-8
    diverging = [
        _relative(_join(neumann(matvec, _split(b), iterations=k, scale=0.45).x), solution) for k in (20, 60)
    ]
    assert diverging[1] > diverging[0] > 1


def test_neumann_is_the_truncated_series_and_reports_its_residual() -> None:
    matrix = _spd(1.0, 3.0)
    b = torch.randn(SIZE, dtype=torch.double)
    calls, matvec = _operator(matrix)
    scale = 0.4
    step = torch.eye(SIZE, dtype=torch.double) - scale * matrix
    series = scale * sum(torch.linalg.matrix_power(step, k) @ b for k in range(4))
    result = neumann(matvec, _split(b), iterations=4, scale=scale)
    assert torch.allclose(_join(result.x), series, rtol=1e-12)
    assert len(calls) == 4
    assert result.residual_norm == pytest.approx(_relative(matrix @ series, b), rel=1e-9)
    early = neumann(matvec, _split(b), iterations=500, scale=scale, tol=1e-6)
    assert early.iterations < 500
    assert early.residual_norm <= 1e-6


def test_exact_and_identity() -> None:
    matrix = _spd(0.1, 100.0)
    b = torch.randn(SIZE, dtype=torch.double)
    _, matvec = _operator(matrix)
    result = exact(matvec, _split(b))
    assert _relative(_join(result.x), torch.linalg.solve(matrix, b)) < 1e-10
    assert result.iterations == SIZE
    assert result.residual_norm < 1e-12
    calls, counted = _operator(matrix)
    first_order = identity(counted, _split(b))
    assert torch.equal(_join(first_order.x), b)
    assert first_order.iterations == 0 and not calls and math.isnan(first_order.residual_norm)


def test_every_named_solver_accepts_the_shared_signature() -> None:
    matrix = _spd(1.0, 2.0)
    b = _split(torch.randn(SIZE, dtype=torch.double))
    _, matvec = _operator(matrix)
    assert set(SOLVERS) == {"cg", "neumann", "exact", "identity", "minres", "lowrank"}
    curvature = build_lowrank(matvec, b, rank=3, generator=torch.Generator().manual_seed(0))
    for name, solve in SOLVERS.items():
        extra: dict[str, object] = {"scale": 0.5} if name == "neumann" else {}
        if name == "lowrank":
            extra = {"curvature": curvature, "mu": 1.0}
        result = solve(matvec, b, iterations=3, tol=0.0, x0=None, **extra)
        assert isinstance(result, SolveResult)
        assert all(x.shape == t.shape for x, t in zip(result.x, b))


def _indefinite(seed: int, size: int = SIZE) -> Tensor:
    """A random symmetric indefinite matrix, eigenvalues in [−3, −0.2] ∪ [0.3, 40], none near 0."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.double, generator=generator))
    negative = size // 4
    eigenvalues = torch.cat(
        [
            torch.linspace(-3.0, -0.2, negative, dtype=torch.double),
            torch.linspace(0.3, 40.0, size - negative, dtype=torch.double),
        ]
    )
    return q @ torch.diag(eigenvalues) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minres_reaches_the_dense_solve_on_indefinite_systems(seed: int) -> None:
    matrix = _indefinite(seed)
    b = torch.randn(SIZE, dtype=torch.double, generator=torch.Generator().manual_seed(100 + seed))
    calls, matvec = _operator(matrix)
    result = minres(matvec, _split(b), iterations=3 * SIZE)
    assert _relative(_join(result.x), torch.linalg.solve(matrix, b)) < 1e-8
    assert result.residual_norm < 1e-8
    assert len(calls) == result.iterations < 3 * SIZE
    textbook = cg(matvec, _split(b), iterations=8, layerwise=False)
    assert _relative(matrix @ _join(textbook.x), b) > 1e-3


def test_minres_true_residual_never_grows_and_the_recursion_reports_it() -> None:
    matrix = _indefinite(3)
    b = torch.randn(SIZE, dtype=torch.double)
    _, matvec = _operator(matrix)
    previous = math.inf
    for k in range(1, SIZE + 1):
        result = minres(matvec, _split(b), iterations=k)
        assert result.iterations == k or result.residual_norm < 1e-10
        actual = _relative(matrix @ _join(result.x), b)
        assert actual <= previous + 1e-12, k
        assert result.residual_norm == pytest.approx(actual, rel=1e-6, abs=1e-12), k
        assert true_residual(matvec, _split(b), result.x) == pytest.approx(actual, rel=1e-12, abs=1e-14)
        previous = actual


def test_minres_tolerance_and_warm_start() -> None:
    matrix = _indefinite(4)
    b = torch.randn(SIZE, dtype=torch.double)
    calls, matvec = _operator(matrix)
    result = minres(matvec, _split(b), iterations=200, tol=1e-4)
    assert 0 < result.iterations < 200 and len(calls) == result.iterations
    assert result.residual_norm <= 1e-4
    assert _relative(matrix @ _join(result.x), b) <= 1.0001e-4
    solution = _split(torch.linalg.solve(matrix, b))
    calls.clear()
    warm = minres(matvec, _split(b), iterations=5, tol=1e-8, x0=solution)
    assert warm.iterations == 0 and len(calls) == 1
    start = _split(torch.randn(SIZE, dtype=torch.double))
    restarted = minres(matvec, _split(b), iterations=3 * SIZE, x0=start)
    assert _relative(_join(restarted.x), _join(solution)) < 1e-8


def _jacobi(matrix: Tensor) -> Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]:
    """An SPD preconditioner: the inverse of |diag(A)| plus a random SPD perturbation of it."""
    generator = torch.Generator().manual_seed(7)
    raw = torch.randn(SIZE, SIZE, dtype=torch.double, generator=generator) * 0.05
    inverse = torch.diag(1.0 / matrix.diagonal().abs().clamp_min(0.5)) + raw @ raw.T

    def apply(vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return _split(inverse @ _join(vectors))

    return apply


def test_preconditioned_minres_and_cg_reach_the_dense_solve() -> None:
    indefinite = _indefinite(5)
    b = torch.randn(SIZE, dtype=torch.double)
    _, matvec = _operator(indefinite)
    result = minres(matvec, _split(b), iterations=3 * SIZE, preconditioner=_jacobi(indefinite))
    assert _relative(_join(result.x), torch.linalg.solve(indefinite, b)) < 1e-8
    assert result.residual_norm == pytest.approx(_relative(indefinite @ _join(result.x), b), abs=1e-10)
    partial = minres(matvec, _split(b), iterations=6, preconditioner=_jacobi(indefinite))
    assert partial.residual_norm == pytest.approx(_relative(indefinite @ _join(partial.x), b), rel=1e-8)
    spd = _spd(0.5, 40.0)
    _, spd_matvec = _operator(spd)
    solved = cg(spd_matvec, _split(b), iterations=3 * SIZE, layerwise=False, preconditioner=_jacobi(spd))
    assert _relative(_join(solved.x), torch.linalg.solve(spd, b)) < 1e-8
    assert solved.residual_norm < 1e-8
    with pytest.raises(ValueError, match="layerwise"):
        cg(spd_matvec, _split(b), iterations=3, preconditioner=_jacobi(spd))


def test_preconditioning_with_the_exact_inverse_takes_one_iteration() -> None:
    spd = _spd(0.5, 40.0)
    inverse = torch.linalg.inv(spd)
    b = torch.randn(SIZE, dtype=torch.double)
    _, matvec = _operator(spd)

    def exact_inverse(vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return _split(inverse @ _join(vectors))

    for solve in (minres, lambda *a, **k: cg(*a, layerwise=False, **k)):
        result = solve(matvec, _split(b), iterations=1, preconditioner=exact_inverse)
        assert _relative(_join(result.x), inverse @ b) < 1e-10


def _bissl_system(hessian: Tensor, mu: float) -> Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]:
    def system(vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        flat = _join(vectors)
        return _split(flat + hessian @ flat / mu)

    return system


def test_lowrank_solver_without_refinement_spends_no_product() -> None:
    hessian = _spd(-20.0, 60.0)
    calls, matvec = _operator(hessian)
    mu = 10.0
    curvature = build_lowrank(matvec, _split(torch.zeros(SIZE, dtype=torch.double)), rank=6)
    calls.clear()
    b = torch.randn(SIZE, dtype=torch.double)
    for negative in ("clip", "abs", "keep"):
        result = lowrank(_bissl_system(hessian, mu), _split(b), curvature=curvature, mu=mu, negative=negative)
        assert result.iterations == 0 and math.isnan(result.residual_norm)
        assert torch.allclose(_join(result.x), _join(curvature.inverse(_split(b), mu, negative)))
    full = build_lowrank(matvec, _split(torch.zeros(SIZE, dtype=torch.double)), rank=SIZE)
    exact_solution = torch.linalg.solve(torch.eye(SIZE, dtype=torch.double) + hessian / mu, b)
    result = lowrank(_bissl_system(hessian, mu), _split(b), curvature=full, mu=mu, negative="keep")
    assert _relative(_join(result.x), exact_solution) < 1e-8
    with pytest.raises(ValueError, match="refine"):
        lowrank(matvec, _split(b), curvature=curvature, mu=mu, refine="gmres")


@pytest.mark.parametrize("refine", ["cg", "minres"])
def test_lowrank_deflated_refinement_reaches_the_dense_solve(refine: str) -> None:
    mu = 10.0
    spread = torch.cat([torch.tensor([900.0, 500.0, 200.0, 120.0]), torch.linspace(0.0, 5.0, SIZE - 4)])
    q, _ = torch.linalg.qr(torch.randn(SIZE, SIZE, dtype=torch.double))
    hessian = q @ torch.diag(spread.double()) @ q.T
    _, matvec = _operator(hessian)
    system = _bissl_system(hessian, mu)
    b = torch.randn(SIZE, dtype=torch.double)
    solution = torch.linalg.solve(torch.eye(SIZE, dtype=torch.double) + hessian / mu, b)
    curvature = build_lowrank(matvec, _split(torch.zeros(SIZE, dtype=torch.double)), rank=6)
    two = lowrank(system, _split(b), iterations=2, curvature=curvature, mu=mu, refine=refine)
    plain = minres(system, _split(b), iterations=3)
    assert two.iterations == 2
    assert two.residual_norm < plain.residual_norm
    assert two.residual_norm == pytest.approx(_relative(_join(system(two.x)), b), rel=1e-6)
    converged = lowrank(
        system, _split(b), iterations=3 * SIZE, tol=1e-11, curvature=curvature, mu=mu, refine=refine
    )
    assert _relative(_join(converged.x), solution) < 1e-8
