"""The upper-level gradient against the dense formula (docs/method.md: Implicit gradient) and finite differences of the bilevel objective."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bissl.bilevel.hvp import HessianVectorOperator, flat_parameters, frozen_bn_stats, hessian_vector_operator
from bissl.bilevel.implicit import UpperGradients, inverse_jacobian_product, upper_gradients

Vectors = tuple[Tensor, ...]


def _join(vectors: Vectors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in vectors])


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _loss_of_flat(
    module: nn.Module, loss_of_module: Callable[[nn.Module], Tensor]
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The module's parameters as one vector and the loss as a function of such a vector (on a copy)."""

    class Bound(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = copy.deepcopy(module)

        def forward(self) -> Tensor:
            return loss_of_module(self.inner)

    bound = Bound()
    named = list(bound.named_parameters())

    def loss(vector: Tensor) -> Tensor:
        pieces, offset = {}, 0
        for name, p in named:
            pieces[name] = vector[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
        return torch.func.functional_call(bound, pieces, ())

    return torch.cat([p.detach().reshape(-1) for _, p in named]), loss


def _dense_hessian(module: nn.Module, loss_of_module: Callable[[nn.Module], Tensor]) -> Tensor:
    flat, loss = _loss_of_flat(module, loss_of_module)
    hessian = torch.autograd.functional.hessian(loss, flat)
    assert isinstance(hessian, Tensor)
    return hessian


def _dense_gradient(module: nn.Module, loss_of_module: Callable[[nn.Module], Tensor]) -> Tensor:
    flat, loss = _loss_of_flat(module, loss_of_module)
    gradient = torch.autograd.functional.jacobian(loss, flat)
    assert isinstance(gradient, Tensor)
    return gradient


def _random_spd_operator(size: int) -> tuple[Tensor, Callable[[Vectors], Vectors]]:
    q, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.double))
    hessian = q @ torch.diag(torch.linspace(0.0, 30.0, size, dtype=torch.double)) @ q.T

    def matvec(vectors: Vectors) -> Vectors:
        product = hessian @ _join(vectors)
        return (product[:4].view(2, 2), product[4:])

    return hessian, matvec


def test_inverse_jacobian_product_solves_the_damped_system() -> None:
    hessian, matvec = _random_spd_operator(9)
    v = (torch.randn(2, 2, dtype=torch.double), torch.randn(5, dtype=torch.double))
    lam, damping = 1e-3, 10.0
    expected = torch.linalg.solve(torch.eye(9, dtype=torch.double) + hessian / (lam + damping), _join(v))
    solvers: list[tuple[str, dict[str, Any]]] = [
        ("exact", {}),
        ("cg", {"iterations": 30, "layerwise": False}),
    ]
    for solver, options in solvers:
        result = inverse_jacobian_product(matvec, v, lam=lam, damping=damping, solver=solver, **options)
        assert _relative(_join(result.x), expected) < 1e-8, solver
    default = inverse_jacobian_product(matvec, v, lam=lam, damping=damping)
    assert default.iterations == 5
    first_order = inverse_jacobian_product(matvec, v, lam=lam, damping=damping, solver="identity")
    assert torch.equal(_join(first_order.x), _join(v))


def test_reduce_hook_applies_to_every_hessian_vector_product() -> None:
    hessian, matvec = _random_spd_operator(9)
    v = (torch.randn(2, 2, dtype=torch.double), torch.randn(5, dtype=torch.double))
    calls: list[int] = []

    def double_it(vectors: Vectors) -> Vectors:
        calls.append(1)
        return tuple(2 * t for t in vectors)

    result = inverse_jacobian_product(
        matvec, v, lam=0.5, damping=0.5, solver="cg", reduce=double_it, iterations=40, layerwise=False
    )
    assert len(calls) == result.iterations == 40
    expected = torch.linalg.solve(torch.eye(9, dtype=torch.double) + 2 * hessian, _join(v))
    assert _relative(_join(result.x), expected) < 1e-8


def test_neumann_needs_a_scale_and_unknown_solvers_are_rejected() -> None:
    _, matvec = _random_spd_operator(9)
    v = (torch.ones(2, 2, dtype=torch.double), torch.ones(5, dtype=torch.double))
    with pytest.raises(ValueError, match="scale"):
        inverse_jacobian_product(matvec, v, lam=1.0, damping=0.0, solver="neumann")
    with pytest.raises(ValueError, match="not one of"):
        inverse_jacobian_product(matvec, v, lam=1.0, damping=0.0, solver="lu")
    result = inverse_jacobian_product(
        matvec, v, lam=1e-3, damping=10.0, solver="neumann", scale=0.4, iterations=60
    )
    assert result.residual_norm < 1e-6


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 2, 2),
            nn.Tanh(),
            nn.Flatten(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@dataclass
class TinyBilevel:
    """Lower and upper copies of a tiny CNN with BatchNorm, a fixed pretext head with BatchNorm, a linear head."""

    lower: nn.Module
    upper: nn.Module
    pretext_head: nn.Module
    upper_head: nn.Module
    pretext_images: Tensor
    pretext_labels: Tensor
    downstream_images: Tensor
    downstream_labels: Tensor

    def pretext_loss_of(self, backbone: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(
            self.pretext_head(backbone(self.pretext_images)), self.pretext_labels
        )

    def downstream_loss(self, backbone: nn.Module, head: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(head(backbone(self.downstream_images)), self.downstream_labels)

    def operator(self, backbone: nn.Module | None = None) -> HessianVectorOperator:
        module = self.lower if backbone is None else backbone
        return hessian_vector_operator(
            lambda: self.pretext_loss_of(module),
            flat_parameters(module),
            "reuse",
            modules=[module, self.pretext_head],
        )

    def gradients(self, operator: HessianVectorOperator, **options: Any) -> UpperGradients:
        settings: dict[str, Any] = {"lam": 1e-3, "damping": 10.0, "gamma": 1.0} | options
        return upper_gradients(
            hvp_operator_or_matvec=operator,
            lower_backbone=self.lower,
            upper_backbone=self.upper,
            upper_head=self.upper_head,
            downstream_loss_fn=self.downstream_loss,
            **settings,
        )


def _tiny_bilevel() -> TinyBilevel:
    lower = TinyBackbone().double().train()
    upper = copy.deepcopy(lower)
    with torch.no_grad():
        for p in upper.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pretext_head = (
        nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).double().train()
    )
    pretext_head.requires_grad_(False)
    return TinyBilevel(
        lower=lower,
        upper=upper,
        pretext_head=pretext_head,
        upper_head=nn.Linear(8, 3).double(),
        pretext_images=torch.randn(6, 1, 8, 8, dtype=torch.double),
        pretext_labels=torch.arange(6) % 3,
        downstream_images=torch.randn(5, 1, 8, 8, dtype=torch.double),
        downstream_labels=torch.tensor([0, 1, 2, 1, 0]),
    )


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_upper_gradients_equal_the_dense_formula(gamma: float) -> None:
    problem = _tiny_bilevel()
    lower, upper, upper_head = problem.lower, problem.upper, problem.upper_head
    downstream_loss = problem.downstream_loss
    lam, damping = 1e-3, 10.0

    with frozen_bn_stats(lower, problem.pretext_head):
        hessian = _dense_hessian(lower, problem.pretext_loss_of)
        v = _dense_gradient(lower, lambda b: downstream_loss(b, upper_head))
        head_lower = _dense_gradient(upper_head, lambda h: downstream_loss(lower, h))
        backbone_upper = _dense_gradient(upper, lambda b: downstream_loss(b, upper_head))
        head_upper = _dense_gradient(upper_head, lambda h: downstream_loss(upper, h))
    system = torch.eye(hessian.shape[0], dtype=torch.double) + hessian / (lam + damping)
    expected_backbone = torch.linalg.solve(system, v) + gamma * backbone_upper
    expected_head = head_lower + gamma * head_upper

    solvers: list[tuple[str, dict[str, Any]]] = [
        ("exact", {}),
        ("cg", {"iterations": 80, "layerwise": False}),
    ]
    for solver, options in solvers:
        operator = problem.operator()
        result = problem.gradients(
            operator, lam=lam, damping=damping, gamma=gamma, solver=solver, solver_options=options
        )
        operator.release()
        assert _relative(_join(result.backbone), expected_backbone) < 1e-8, solver
        assert _relative(_join(result.head), expected_head) < 1e-10, solver
        assert result.upper_loss_lower == pytest.approx(float(downstream_loss(lower, upper_head).detach()))
        if gamma == 0:
            assert torch.equal(_join(result.backbone), _join(result.solution))
            assert math.isnan(result.upper_loss_upper)
        else:
            assert result.upper_loss_upper == pytest.approx(
                float(downstream_loss(upper, upper_head).detach())
            )
    assert all(p.grad is None for m in (lower, upper, upper_head) for p in m.parameters())


def test_reduce_hook_sees_every_product_and_the_final_gradients_once() -> None:
    problem = _tiny_bilevel()
    sizes: list[int] = []

    def record(vectors: Vectors) -> Vectors:
        sizes.append(len(vectors))
        return vectors

    operator = problem.operator()
    plain = problem.gradients(operator)
    reduced = problem.gradients(operator, reduce=record)
    backbone_count, head_count = len(flat_parameters(problem.upper)), len(flat_parameters(problem.upper_head))
    assert sizes == [backbone_count] * 5 + [backbone_count + head_count]
    assert torch.equal(_join(plain.backbone), _join(reduced.backbone))
    converged = problem.gradients(
        operator, solver_options={"iterations": 200, "layerwise": False, "tol": 1e-10}
    )
    assert converged.iterations < 200
    warm = problem.gradients(operator, x0=converged.solution, solver_options={"tol": 1e-8})
    assert warm.iterations == 0
    assert torch.allclose(_join(warm.backbone), _join(converged.backbone))
    with pytest.raises(ValueError, match="flat_parameters"):
        problem.gradients(problem.operator(TinyBackbone().double()))


class ConvexProblem:
    """A bilevel problem whose lower level (φ_P fixed) is strongly convex in θ_P and solved by Newton's method.

    θ = (W, b) of a linear backbone, so the pretext cross-entropy of a fixed linear head is convex in θ;
    the proximal term λ/2 ‖θ_P − θ_D‖² makes it strongly convex.
    """

    def __init__(self, lam: float, gamma: float) -> None:
        self.lam, self.gamma = lam, gamma
        self.pretext_head = nn.Linear(3, 4).double().requires_grad_(False)
        self.pretext_images = torch.randn(12, 5, dtype=torch.double)
        self.pretext_labels = torch.arange(12) % 4
        self.downstream_images = torch.randn(8, 5, dtype=torch.double)
        self.downstream_labels = torch.arange(8) % 3
        self.shapes = [(3, 5), (3,)]

    def backbone(self, theta: Tensor) -> nn.Module:
        module = nn.Linear(5, 3).double()
        with torch.no_grad():
            module.weight.copy_(theta[:15].view(3, 5))
            module.bias.copy_(theta[15:])
        return module

    def features(self, theta: Tensor, images: Tensor) -> Tensor:
        return images @ theta[:15].view(3, 5).T + theta[15:]

    def pretext_loss(self, theta: Tensor) -> Tensor:
        logits = self.pretext_head(self.features(theta, self.pretext_images))
        return nn.functional.cross_entropy(logits, self.pretext_labels)

    def downstream_loss(self, theta: Tensor, head: Tensor) -> Tensor:
        logits = self.features(theta, self.downstream_images) @ head[:9].view(3, 3).T + head[9:]
        return nn.functional.cross_entropy(logits, self.downstream_labels)

    def lower_solution(self, theta_upper: Tensor) -> Tensor:
        """argmin over θ_P of L_P(θ_P) + λ/2 ‖θ_P − θ_D‖², by Newton's method to machine precision."""
        theta = theta_upper.clone()
        for _ in range(50):
            objective = lambda t: self.pretext_loss(t) + 0.5 * self.lam * (t - theta_upper).pow(2).sum()  # noqa: E731
            gradient = torch.autograd.functional.jacobian(objective, theta)
            if float(gradient.norm()) < 1e-14:
                break
            hessian = torch.autograd.functional.hessian(objective, theta)
            theta = theta - torch.linalg.solve(hessian, gradient)
        return theta

    def objective(self, theta_upper: Tensor, head: Tensor) -> Tensor:
        """The true bilevel objective L_D(θ_P*(θ_D), φ_D) + γ L_D(θ_D, φ_D)."""
        lower = self.lower_solution(theta_upper)
        return self.downstream_loss(lower, head) + self.gamma * self.downstream_loss(theta_upper, head)


def test_upper_gradients_equal_finite_differences_of_the_bilevel_objective() -> None:
    problem = ConvexProblem(lam=0.3, gamma=0.5)
    theta_upper = 0.5 * torch.randn(18, dtype=torch.double)
    head = torch.randn(12, dtype=torch.double)
    theta_lower = problem.lower_solution(theta_upper)

    lower_module = problem.backbone(theta_lower)
    upper_module = problem.backbone(theta_upper)
    head_module = nn.Linear(3, 3).double()
    with torch.no_grad():
        head_module.weight.copy_(head[:9].view(3, 3))
        head_module.bias.copy_(head[9:])

    def pretext_loss() -> Tensor:
        return nn.functional.cross_entropy(
            problem.pretext_head(lower_module(problem.pretext_images)), problem.pretext_labels
        )

    def downstream_loss(backbone: nn.Module, classifier: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(
            classifier(backbone(problem.downstream_images)), problem.downstream_labels
        )

    operator = hessian_vector_operator(pretext_loss, flat_parameters(lower_module), "reuse")
    result = upper_gradients(
        hvp_operator_or_matvec=operator,
        lower_backbone=lower_module,
        upper_backbone=upper_module,
        upper_head=head_module,
        downstream_loss_fn=downstream_loss,
        lam=problem.lam,
        damping=0.0,
        gamma=problem.gamma,
        solver="cg",
        solver_options={"iterations": 100, "layerwise": False, "tol": 1e-13},
    )
    gradient = torch.cat([_join(result.backbone), _join(result.head)])
    step = 1e-6
    point = torch.cat([theta_upper, head])
    for _ in range(3):
        direction = torch.randn(30, dtype=torch.double)
        direction /= direction.norm()
        plus, minus = point + step * direction, point - step * direction
        difference = (problem.objective(plus[:18], plus[18:]) - problem.objective(minus[:18], minus[18:])) / (
            2 * step
        )
        directional = gradient.dot(direction)
        assert abs(float(directional - difference)) < 1e-3 * abs(float(directional))
    first_order = upper_gradients(
        hvp_operator_or_matvec=operator,
        lower_backbone=lower_module,
        upper_backbone=upper_module,
        upper_head=head_module,
        downstream_loss_fn=downstream_loss,
        lam=problem.lam,
        damping=0.0,
        gamma=problem.gamma,
        solver="identity",
    )
    assert _relative(_join(first_order.backbone), _join(result.backbone)) > 1e-2
