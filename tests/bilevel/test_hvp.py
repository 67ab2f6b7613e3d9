"""Hessian-vector operators against the dense Hessian, against each other, and BatchNorm side effects."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from bissl.bilevel.hvp import (
    HVP_MODES,
    flat_parameters,
    frozen_bn_stats,
    hessian_vector_operator,
    untracked_bn_stats,
)
from bissl.models.backbones import build_backbone, feature_dim
from bissl.models.heads import mlp


def _bn_state(module: nn.Module) -> dict[str, Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers()}


def _assert_same_state(before: dict[str, Tensor], module: nn.Module) -> None:
    after = dict(module.named_buffers())
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


def _relative_error(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    flat_a = torch.cat([t.reshape(-1) for t in a])
    flat_b = torch.cat([t.reshape(-1) for t in b])
    return float((flat_a - flat_b).norm() / flat_b.norm())


def dense_hessian(
    backbone: nn.Module, loss_of_backbone: Callable[[nn.Module], Tensor], *others: nn.Module
) -> Tensor:
    """torch.autograd.functional.hessian over the flattened backbone parameters, on a copy of the backbone;
    the running statistics of ``others`` (modules the loss also runs) are restored afterwards."""

    class Bound(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = copy.deepcopy(backbone)

        def forward(self) -> Tensor:
            return loss_of_backbone(self.inner)

    bound = Bound()
    named = list(bound.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss_of_vector(vector: Tensor) -> Tensor:
        pieces, offset = {}, 0
        for name, p in named:
            pieces[name] = vector[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
        return torch.func.functional_call(bound, pieces, ())

    with frozen_bn_stats(*others):
        hessian = torch.autograd.functional.hessian(loss_of_vector, flat)
    assert isinstance(hessian, Tensor)
    return hessian


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Softplus())

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 3, 3, bias=False),
            nn.BatchNorm2d(3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 2, 2),
            nn.BatchNorm2d(2),
            nn.Tanh(),
            nn.Flatten(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _problem(kind: str) -> tuple[nn.Module, nn.Module, Callable[[nn.Module], Tensor]]:
    """A backbone, a fixed pretext head with BatchNorm, and the pretext loss as a function of the backbone."""
    if kind == "mlp":
        backbone: nn.Module = TinyMLP()
        inputs = torch.randn(6, 3)
        head = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Linear(3, 3))
    else:
        backbone = TinyCNN()
        inputs = torch.randn(5, 1, 8, 8)
        head = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))
    backbone.double().train()
    head.double().train()
    for p in head.parameters():
        p.requires_grad_(False)
    labels = torch.arange(inputs.shape[0]) % 3

    def loss_of_backbone(module: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(head(module(inputs.double())), labels)

    return backbone, head, loss_of_backbone


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("mode", HVP_MODES)
def test_hvp_equals_dense_hessian_times_vector(kind: str, mode: str) -> None:
    backbone, head, loss_of_backbone = _problem(kind)
    state = _bn_state(backbone) | {"head." + k: v for k, v in _bn_state(head).items()}
    hessian = dense_hessian(backbone, loss_of_backbone, head)
    params = flat_parameters(backbone)
    operator = hessian_vector_operator(
        lambda: loss_of_backbone(backbone), params, mode, modules=[backbone, head]
    )
    for _ in range(3):
        vectors = tuple(torch.randn_like(p) for p in params)
        expected = hessian @ torch.cat([v.reshape(-1) for v in vectors])
        product = operator.matvec(vectors)
        assert all(p.shape == q.shape for p, q in zip(product, params))
        assert _relative_error((torch.cat([t.reshape(-1) for t in product]),), (expected,)) < 1e-8
    operator.release()
    _assert_same_state({k: v for k, v in state.items() if not k.startswith("head.")}, backbone)
    _assert_same_state({k[5:]: v for k, v in state.items() if k.startswith("head.")}, head)


def test_dense_hessian_helper_is_symmetric_and_nonzero() -> None:
    backbone, head, loss_of_backbone = _problem("cnn")
    hessian = dense_hessian(backbone, loss_of_backbone, head)
    assert torch.allclose(hessian, hessian.T, atol=1e-10)
    assert hessian.abs().max() > 1e-3


def _first_bn(module: nn.Module) -> nn.BatchNorm2d:
    return next(m for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def _buffer(module: nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    assert isinstance(value, Tensor)
    return value


def _small_resnet_problem() -> tuple[nn.Module, nn.Module, Callable[[], Tensor]]:
    backbone = build_backbone("small_resnet", in_channels=1, width=4, blocks=(1, 1)).train()
    head = mlp(feature_dim(backbone), (16,), 8).train()
    views = torch.randn(2, 12, 1, 12, 12)

    def pretext_loss() -> Tensor:
        first = nn.functional.normalize(head(backbone(views[0])), dim=1)
        second = nn.functional.normalize(head(backbone(views[1])), dim=1)
        logits = first @ second.T / 0.5
        return nn.functional.cross_entropy(logits, torch.arange(logits.shape[0]))

    return backbone, head, pretext_loss


def test_all_modes_agree_on_a_small_resnet_and_keep_running_statistics() -> None:
    backbone, head, pretext_loss = _small_resnet_problem()
    backbone_state, head_state = _bn_state(backbone), _bn_state(head)
    params = flat_parameters(backbone)
    vectors = tuple(torch.randn_like(p) for p in params)
    results = {}
    for mode in HVP_MODES:
        with hessian_vector_operator(pretext_loss, params, mode, modules=[backbone, head]) as operator:
            results[mode] = operator.matvec(vectors)
            assert _relative_error(operator.matvec(vectors), results[mode]) < 1e-6
    for mode in HVP_MODES:
        assert _relative_error(results[mode], results["recompute"]) < 1e-4, mode
    assert sum(float(t.abs().sum()) for t in results["recompute"]) > 0
    _assert_same_state(backbone_state, backbone)
    _assert_same_state(head_state, head)


@pytest.mark.parametrize(
    ("mode", "expected_updates"), [("recompute", 3), ("reuse", 1), ("forward-over-reverse", 1)]
)
def test_update_bn_stats_flag_restores_the_reference_side_effect(mode: str, expected_updates: int) -> None:
    backbone, head, pretext_loss = _small_resnet_problem()
    bn = _first_bn(backbone)
    params = flat_parameters(backbone)
    vectors = tuple(torch.randn_like(p) for p in params)
    operator = hessian_vector_operator(
        pretext_loss, params, mode, modules=[backbone, head], update_bn_stats=True
    )
    untouched = hessian_vector_operator(pretext_loss, params, "recompute", modules=[backbone, head])
    for _ in range(3):
        updated_product = operator.matvec(vectors)
    operator.release()
    assert int(_buffer(bn, "num_batches_tracked")) == 2 * expected_updates
    assert _relative_error(updated_product, untouched.matvec(vectors)) < 1e-5


@pytest.mark.parametrize("update_bn_stats", [False, True])
def test_reused_graph_survives_train_mode_forwards_and_frozen_bn_stats(update_bn_stats: bool) -> None:
    backbone, head, pretext_loss = _small_resnet_problem()
    params = flat_parameters(backbone)
    vectors = tuple(torch.randn_like(p) for p in params)
    operator = hessian_vector_operator(
        pretext_loss, params, "reuse", modules=[backbone, head], update_bn_stats=update_bn_stats
    )
    first = operator.matvec(vectors)
    backbone(torch.randn(4, 1, 12, 12))
    with frozen_bn_stats(backbone, head):
        backbone(torch.randn(4, 1, 12, 12))
    assert torch.equal(
        torch.cat([t.reshape(-1) for t in operator.matvec(vectors)]),
        torch.cat([t.reshape(-1) for t in first]),
    )


def test_frozen_bn_stats_keeps_a_graph_that_saved_eval_mode_statistics_valid() -> None:
    backbone, head, pretext_loss = _small_resnet_problem()
    backbone.eval()
    params = flat_parameters(backbone)
    operator = hessian_vector_operator(pretext_loss, params, "reuse", modules=[backbone, head])
    with frozen_bn_stats(backbone):
        backbone(torch.randn(4, 1, 12, 12))
    products = operator.matvec(tuple(torch.ones_like(p) for p in params))
    assert sum(float(t.abs().sum()) for t in products) > 0


def test_without_modules_running_statistics_are_not_protected() -> None:
    backbone, _, pretext_loss = _small_resnet_problem()
    params = flat_parameters(backbone)
    hessian_vector_operator(pretext_loss, params, "reuse").matvec(tuple(torch.ones_like(p) for p in params))
    assert int(_buffer(_first_bn(backbone), "num_batches_tracked")) == 2


def test_reuse_operator_builds_the_graph_once_and_refuses_after_release() -> None:
    calls = []
    layer = nn.Linear(3, 2).double()
    inputs = torch.randn(4, 3, dtype=torch.double)

    def loss() -> Tensor:
        calls.append(1)
        return layer(inputs).tanh().pow(2).sum()

    params = flat_parameters(layer)
    operator = hessian_vector_operator(loss, params, "reuse")
    for _ in range(4):
        operator.matvec(tuple(torch.ones_like(p) for p in params))
    assert len(calls) == 1
    assert operator.products == 4
    operator.release()
    with pytest.raises(RuntimeError, match="released"):
        operator.matvec(tuple(torch.ones_like(p) for p in params))
    recompute = hessian_vector_operator(loss, params, "recompute")
    for _ in range(2):
        recompute.matvec(tuple(torch.ones_like(p) for p in params))
    assert len(calls) == 3


@pytest.mark.parametrize("mode", HVP_MODES)
def test_unused_and_linear_parameters_give_zero_products(mode: str) -> None:
    used = nn.Linear(2, 1).double()
    unused = nn.Linear(2, 1).double()
    inputs = torch.randn(3, 2, dtype=torch.double)
    holder = nn.ModuleList([used, unused])
    params = flat_parameters(holder)
    operator = hessian_vector_operator(lambda: used(inputs).sum(), params, mode, modules=[holder])
    products = operator.matvec(tuple(torch.ones_like(p) for p in params))
    assert all(torch.equal(p, torch.zeros_like(p)) for p in products)


def test_forward_over_reverse_needs_modules_holding_the_parameters() -> None:
    layer = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="modules="):
        hessian_vector_operator(
            lambda: layer(torch.ones(1, 2)).sum(), flat_parameters(layer), "forward-over-reverse"
        )


def test_unknown_mode_and_misshaped_vectors_are_rejected() -> None:
    layer = nn.Linear(2, 1)
    params = flat_parameters(layer)
    with pytest.raises(ValueError, match="not one of"):
        hessian_vector_operator(lambda: layer(torch.ones(1, 2)).sum(), params, "magic")
    operator = hessian_vector_operator(lambda: layer(torch.ones(1, 2)).sum(), params, "recompute")
    with pytest.raises(ValueError, match="shaped like"):
        operator.matvec((torch.ones(3),))


def test_frozen_bn_stats_restores_bit_identically() -> None:
    backbone, head, pretext_loss = _small_resnet_problem()
    backbone_state, head_state = _bn_state(backbone), _bn_state(head)
    with frozen_bn_stats(backbone, head):
        pretext_loss()
        assert not torch.equal(
            _buffer(_first_bn(backbone), "running_mean"), backbone_state["stem.1.running_mean"]
        )
    _assert_same_state(backbone_state, backbone)
    _assert_same_state(head_state, head)


def test_untracked_bn_stats_keeps_outputs_and_buffer_objects() -> None:
    backbone, _, _ = _small_resnet_problem()
    images = torch.randn(6, 1, 12, 12)
    reference = copy.deepcopy(backbone)
    buffers = {name: buffer for name, buffer in backbone.named_buffers()}
    state = _bn_state(backbone)
    with untracked_bn_stats(backbone):
        output = backbone(images)
    assert torch.equal(output, reference(images))
    assert all(buffers[name] is buffer for name, buffer in backbone.named_buffers())
    _assert_same_state(state, backbone)
