"""The Hessian-vector operator of every pretext task (reuse mode) against the dense Hessian of its loss on a
tiny ResNet in float64 (MoCo v3 and DINO on a tiny ViT too), and what products leave alone: every BatchNorm
running statistic (backbone, head, momentum target), the momentum target's weights and DINO's centre."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bissl.bilevel.hvp import (
    differentiable_attention,
    flat_parameters,
    frozen_bn_stats,
    hessian_vector_operator,
)
from bissl.bilevel.spectrum import flatten, unflatten
from bissl.config import PretextConfig
from bissl.models.backbones import build_backbone, feature_dim
from bissl.pretext import DINO, PRETEXT_TASKS, MoCoV3, PretextTask, build_pretext

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _tiny_vit() -> nn.Module:
    """Patch 4 on 8 px grey images (4 patches + CLS), width 8, 2 heads, depth 1, MLP ratio 2."""
    return build_backbone(
        "vit",
        in_channels=1,
        image_size=8,
        vit_patch_size=4,
        vit_width=8,
        vit_heads=2,
        vit_depth=1,
        vit_mlp_ratio=2.0,
    )


def _task(method: str, backbone: str = "small_resnet") -> tuple[PretextTask, Tensor, Tensor]:
    torch.manual_seed(0)
    if backbone == "vit":
        network, size = _tiny_vit(), 8
    else:
        network, size = build_backbone("small_resnet", in_channels=1, width=3, blocks=(1,)), 6
    config = PretextConfig(
        method=method,  # type: ignore[arg-type]
        projector_hidden=[5],
        projector_dim=4,
        predictor_hidden=[5],
        temperature=0.5,
        moco_temperature=0.5,
        dino_out_dim=7,
        dino_teacher_temperature=0.07,
    )
    task = build_pretext(config, network, feature_dim(network)).double().train()
    target = getattr(task, "target", None)
    if target is not None:  # a target that differs from the online network, so the loss is not trivial
        with torch.no_grad():
            for p in target.parameters():
                p.add_(0.1 * torch.randn_like(p))
    if isinstance(task, DINO):  # a centre away from 0, so the centring takes part
        with torch.no_grad():
            task.center.copy_(0.3 * torch.randn_like(task.center))
    generator = torch.Generator().manual_seed(1)
    view1 = torch.randn(6, 1, size, size, dtype=torch.double, generator=generator)
    view2 = view1 + 0.5 * torch.randn(6, 1, size, size, dtype=torch.double, generator=generator)
    return task, view1, view2


def _dense_hessian(task: PretextTask, view1: Tensor, view2: Tensor) -> Tensor:
    """torch.autograd.functional.hessian of the task's loss over the flattened backbone parameters."""
    names = [f"backbone.{name}" for name, _ in task.backbone.named_parameters()]
    params = flat_parameters(task.backbone)

    def loss_of(vector: Tensor) -> Tensor:
        swapped = dict(zip(names, unflatten(vector, params)))
        return torch.func.functional_call(task, swapped, (view1, view2))

    with frozen_bn_stats(task), differentiable_attention():
        hessian = torch.autograd.functional.hessian(loss_of, flatten(params).detach())
    assert isinstance(hessian, Tensor)
    return hessian


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


def _same_state(before: dict[str, Tensor], module: nn.Module) -> bool:
    after = module.state_dict()
    return before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("method", "backbone"),
    [(m, "small_resnet") for m in PRETEXT_TASKS] + [("mocov3", "vit"), ("dino", "vit")],
)
def test_reuse_operator_equals_the_dense_hessian(method: str, backbone: str) -> None:
    task, view1, view2 = _task(method, backbone)
    before = _state(task)
    dense = _dense_hessian(task, view1, view2)
    assert torch.allclose(dense, dense.T, atol=1e-10)
    assert float(dense.abs().max()) > 1e-3
    params = flat_parameters(task.backbone)
    operator = hessian_vector_operator(lambda: task(view1, view2), params, "reuse", modules=[task])
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(dense.shape[0], dtype=torch.double, generator=generator)
        product = flatten(operator.matvec(unflatten(v, params)))
        assert torch.allclose(product, dense @ v, rtol=1e-8, atol=1e-10)
    operator.release()
    assert _same_state(before, task)  # weights and every running statistic, target included


@pytest.mark.parametrize("mode", ["reuse", "recompute", "forward-over-reverse"])
@pytest.mark.parametrize(
    ("method", "parts"), [("mocov3", {"backbone", "head", "target"}), ("dino", {"backbone", "target"})]
)
def test_products_leave_the_momentum_target_and_every_running_statistic_unchanged(
    mode: str, method: str, parts: set[str]
) -> None:
    task, view1, view2 = _task(method)
    assert isinstance(task, MoCoV3 | DINO)
    before = _state(task)  # DINO: with its centre and teacher temperature
    target_before = _state(task.target)
    bn_buffers = [k for k in before if k.endswith(BN_BUFFERS)]
    assert {k.split(".")[0] for k in bn_buffers} == parts
    params = flat_parameters(task.backbone)
    operator = hessian_vector_operator(lambda: task(view1, view2), params, mode, modules=[task])
    for _ in range(2):
        operator.matvec(tuple(torch.randn_like(p) for p in params))
    operator.release()
    assert _same_state(before, task)
    # the reference's side effect (update_bn_stats) moves the online statistics but never the target's
    updating = hessian_vector_operator(
        lambda: task(view1, view2), params, mode, modules=[task], update_bn_stats=True
    )
    updating.matvec(tuple(torch.randn_like(p) for p in params))
    updating.release()
    assert _same_state(target_before, task.target)
    if isinstance(task, DINO):
        assert torch.equal(task.center, before["center"])
        assert torch.equal(task.teacher_temperature, before["teacher_temperature"])
    assert not torch.equal(
        task.backbone.state_dict()["stem.1.running_mean"], before["backbone.stem.1.running_mean"]
    )
