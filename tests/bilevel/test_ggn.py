"""Gauss–Newton products of the real SimCLR, BYOL, Barlow Twins, MoCo v3 and DINO tasks against dense Jᵀ H_out J
on a tiny ResNet; VICReg has no split."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bissl.bilevel.ggn import GGN_MODES, GaussNewtonOperator, gauss_newton_operator
from bissl.bilevel.hvp import flat_parameters, frozen_bn_stats
from bissl.bilevel.spectrum import flatten, unflatten
from bissl.models.backbones import build_backbone, feature_dim
from bissl.pretext import BYOL, DINO, BarlowTwins, MoCoV3, PretextTask, SimCLR, VICReg
from bissl.pretext.base import OuterLoss

KINDS = ["simclr", "byol", "barlow_twins", "mocov3", "dino"]


def _task(kind: str) -> tuple[PretextTask, Tensor, Tensor]:
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", in_channels=1, width=3, blocks=(1,))
    width = feature_dim(backbone)
    task: PretextTask
    if kind == "simclr":
        task = SimCLR(backbone, width, projector_hidden=(5,), projector_dim=4, temperature=0.5)
    elif kind == "barlow_twins":
        task = BarlowTwins(backbone, width, projector_hidden=(5,), projector_dim=4, redundancy_weight=0.3)
    else:
        momentum_task: BYOL | MoCoV3 | DINO
        if kind == "byol":
            momentum_task = BYOL(
                backbone, width, projector_hidden=(5,), projector_dim=4, predictor_hidden=(5,)
            )
        elif kind == "dino":
            momentum_task = DINO(
                backbone, width, projector_hidden=(5,), projector_dim=4, out_dim=6, teacher_temperature=0.07
            )
            with torch.no_grad():  # a centre away from 0, so the centring takes part
                momentum_task.center.copy_(0.3 * torch.randn_like(momentum_task.center))
        else:
            momentum_task = MoCoV3(
                backbone,
                width,
                projector_hidden=(5,),
                projector_dim=4,
                predictor_hidden=(5,),
                temperature=0.5,
            )
        momentum_task.double()
        with torch.no_grad():
            for p in momentum_task.target.parameters():
                p.add_(0.1 * torch.randn_like(p))
        task = momentum_task
    task.double().train()
    view1 = torch.randn(4, 1, 6, 6, dtype=torch.double)
    view2 = torch.randn(4, 1, 6, 6, dtype=torch.double)
    return task, view1, view2


def _buffers(module: nn.Module) -> dict[str, Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers()}


def _same_buffers(before: dict[str, Tensor], module: nn.Module) -> bool:
    return all(torch.equal(value, dict(module.named_buffers())[name]) for name, value in before.items())


class _Outputs(nn.Module):
    """The split's outputs as a module call, so functional_call can swap the backbone's parameters."""

    def __init__(self, task: PretextTask, view1: Tensor, view2: Tensor) -> None:
        super().__init__()
        self.task = task
        self.views = (view1, view2)

    def forward(self) -> Tensor:
        return self.task.gauss_newton_split(*self.views)[0]


def _dense_ggn(task: PretextTask, view1: Tensor, view2: Tensor) -> Tensor:
    """Jᵀ H_out J with J by torch.autograd.functional.jacobian and H_out by autograd.functional.hessian of
    the outer loss over the finite outputs (masked −inf logits stay fixed)."""
    holder = _Outputs(task, view1, view2)
    names = [f"task.backbone.{name}" for name, p in task.backbone.named_parameters()]
    params = flat_parameters(task.backbone)
    flat = flatten(params).detach()

    def outputs_of(vector: Tensor) -> Tensor:
        return torch.func.functional_call(holder, dict(zip(names, unflatten(vector, params))), ())

    with frozen_bn_stats(task):
        jacobian = torch.autograd.functional.jacobian(outputs_of, flat)
        outputs, outer = task.gauss_newton_split(view1, view2)
    assert isinstance(jacobian, Tensor) and isinstance(outer, OuterLoss)
    outputs = outputs.detach()
    finite = torch.isfinite(outputs).reshape(-1)

    def loss_of_finite(values: Tensor) -> Tensor:
        full = outputs.reshape(-1).clone()
        full = full.masked_scatter(finite, values)
        return outer.value(full.reshape(outputs.shape))

    hessian_finite = torch.autograd.functional.hessian(loss_of_finite, outputs.reshape(-1)[finite])
    assert isinstance(hessian_finite, Tensor)
    size = outputs.numel()
    hessian = torch.zeros(size, size, dtype=torch.double)
    index = torch.nonzero(finite).reshape(-1)
    hessian[index[:, None], index[None, :]] = hessian_finite
    flat_jacobian = jacobian.reshape(size, -1)
    return flat_jacobian.T @ hessian @ flat_jacobian


@pytest.mark.parametrize("kind", KINDS)
def test_split_value_is_the_task_loss_and_its_hvp_is_the_outer_hessian(kind: str) -> None:
    task, view1, view2 = _task(kind)
    with frozen_bn_stats(task):
        outputs, outer = task.gauss_newton_split(view1, view2)
        loss = task.loss(view1, view2)
    assert isinstance(outer, OuterLoss)
    assert float(outer.value(outputs).detach()) == pytest.approx(float(loss.detach()), rel=1e-12)
    detached = outputs.detach()
    u = torch.randn_like(detached)
    product = outer(u)
    assert torch.isfinite(product).all()
    finite = torch.isfinite(detached)
    if kind == "simclr":
        assert not finite.all()
        assert torch.equal(product[~finite], torch.zeros_like(product[~finite]))
    shifted = torch.where(finite, detached, torch.zeros_like(detached))

    def value_of(values: Tensor) -> Tensor:
        return outer.value(torch.where(finite, values, detached))

    _, expected = torch.autograd.functional.hvp(
        value_of, shifted, torch.where(finite, u, torch.zeros_like(u))
    )
    assert torch.allclose(product[finite], expected[finite], atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", GGN_MODES)
def test_ggn_product_equals_dense_jt_h_j_and_is_psd(kind: str, mode: str) -> None:
    task, view1, view2 = _task(kind)
    dense = _dense_ggn(task, view1, view2)
    assert torch.allclose(dense, dense.T, atol=1e-12)
    assert float(dense.abs().max()) > 1e-3
    before = _buffers(task)
    params = flat_parameters(task.backbone)
    operator = gauss_newton_operator(
        lambda: task.gauss_newton_split(view1, view2), params, mode, modules=[task]
    )
    assert isinstance(operator, GaussNewtonOperator) and operator.params == params
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        v = torch.randn(dense.shape[0], dtype=torch.double, generator=generator)
        product = flatten(operator.matvec(unflatten(v, params)))
        assert torch.allclose(product, dense @ v, rtol=1e-9, atol=1e-12)
        assert float(v @ product) >= 0
    assert operator.products == 4
    assert _same_buffers(before, task)
    assert float(torch.linalg.eigvalsh(dense).min()) > -1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_reuse_equals_recompute_and_release_frees_the_graph(kind: str) -> None:
    task, view1, view2 = _task(kind)
    params = flat_parameters(task.backbone)

    def split() -> tuple[Tensor, OuterLoss]:
        return task.gauss_newton_split(view1, view2)

    reuse = gauss_newton_operator(split, params, "reuse", modules=[task])
    recompute = gauss_newton_operator(split, params, "recompute", modules=[task])
    for _ in range(3):
        v = tuple(torch.randn_like(p) for p in params)
        assert torch.allclose(flatten(reuse(v)), flatten(recompute(v)), rtol=1e-12, atol=1e-14)
    reuse.release()
    with pytest.raises(RuntimeError, match="released"):
        reuse.matvec(tuple(torch.zeros_like(p) for p in params))
    with gauss_newton_operator(split, params, modules=[task]) as scoped:
        scoped.matvec(tuple(torch.zeros_like(p) for p in params))
    with pytest.raises(ValueError, match="mode"):
        gauss_newton_operator(split, params, "forward-over-reverse")


@pytest.mark.parametrize(("mode", "expected_updates"), [("recompute", 3), ("reuse", 1)])
def test_update_bn_stats_restores_the_reference_side_effect(mode: str, expected_updates: int) -> None:
    task, view1, view2 = _task("simclr")
    params = flat_parameters(task.backbone)
    layer = task.backbone.stem[1]
    assert isinstance(layer, nn.BatchNorm2d)
    operator = gauss_newton_operator(
        lambda: task.gauss_newton_split(view1, view2), params, mode, modules=[task], update_bn_stats=True
    )
    for _ in range(3):
        operator.matvec(tuple(torch.randn_like(p) for p in params))
    assert layer.num_batches_tracked is not None
    assert int(layer.num_batches_tracked) == expected_updates


def test_parameters_the_outputs_do_not_use_give_zero_products() -> None:
    task, view1, view2 = _task("simclr")
    unused = nn.Parameter(torch.ones(3, dtype=torch.double))
    params = (*flat_parameters(task.backbone), unused)
    operator = gauss_newton_operator(lambda: task.gauss_newton_split(view1, view2), params, modules=[task])
    product = operator.matvec(tuple(torch.randn_like(p) for p in params))
    assert torch.equal(product[-1], torch.zeros(3, dtype=torch.double))
    assert float(flatten(product[:-1]).norm()) > 0


def test_tasks_without_a_split_say_what_to_use() -> None:
    class Plain(PretextTask):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.head = nn.Identity()

    with pytest.raises(
        NotImplementedError, match=r"^Plain has no Gauss–Newton split; use bilevel\.curvature=hessian$"
    ):
        Plain().gauss_newton_split(torch.zeros(1, 2), torch.zeros(1, 2))


def test_vicreg_has_no_split_and_says_why() -> None:
    backbone = build_backbone("small_resnet", in_channels=1, width=3, blocks=(1,))
    task = VICReg(backbone, feature_dim(backbone), projector_hidden=(5,), projector_dim=4)
    with pytest.raises(NotImplementedError, match=r"quartic.*not convex.*bilevel\.curvature=hessian$"):
        task.gauss_newton_split(torch.zeros(2, 1, 6, 6), torch.zeros(2, 1, 6, 6))


def test_barlow_twins_outer_hessian_is_2_on_the_diagonal_and_2_lambda_off_it() -> None:
    task, view1, view2 = _task("barlow_twins")
    with frozen_bn_stats(task):
        outputs, outer = task.gauss_newton_split(view1, view2)
    u = torch.ones_like(outputs)
    product = outer(u)
    eye = torch.eye(outputs.shape[0], dtype=torch.bool)
    assert torch.equal(product[eye], torch.full_like(product[eye], 2.0))
    assert torch.allclose(product[~eye], torch.full_like(product[~eye], 0.6), atol=1e-15)
