"""Exact curvature through attention: on a tiny ViT in float64 every Hessian-vector mode equals the dense
Hessian and central differences of the gradient; PyTorch's fused attention kernel cannot be differentiated
twice, so the operators build their graphs on the math kernel, in a scope that training forwards never see."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bissl.bilevel.hvp as hvp_module
from bissl.bilevel.ggn import gauss_newton_operator
from bissl.bilevel.hvp import (
    HVP_MODES,
    differentiable_attention,
    flat_parameters,
    hessian_vector_operator,
    untracked_bn_stats,
)
from bissl.bilevel.trainer import BilevelTrainer, initial_models
from bissl.config import BilevelConfig
from bissl.models import build_backbone
from bissl.pretext import SimCLR

FUSED_CPU_NODE = "ScaledDotProductFlashAttentionForCpuBackward0"


def _tiny_vit(dtype: torch.dtype) -> nn.Module:
    """Patch 4 on 8 px grey images (4 patches + CLS), width 8, 2 heads, depth 2, MLP ratio 2: 1,400
    parameters."""
    return build_backbone(
        "vit",
        in_channels=1,
        image_size=8,
        vit_patch_size=4,
        vit_width=8,
        vit_heads=2,
        vit_depth=2,
        vit_mlp_ratio=2.0,
    ).to(dtype)


def _pretext(dtype: torch.dtype, seed: int = 0) -> SimCLR:
    """SimCLR on the tiny ViT; the projector (with BatchNorm) is fixed, the backbone is what H is taken over."""
    torch.manual_seed(seed)
    task = SimCLR(_tiny_vit(dtype), 8, projector_hidden=(8,), projector_dim=4).to(dtype).train()
    task.head.requires_grad_(False)
    return task


def _flat(tensors: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _dense_hessian(task: SimCLR, views: Tensor) -> Tensor:
    """The pretext loss's Hessian over the flattened backbone parameters, by ``torch.autograd.functional``
    (vectorised), on the math kernel and without touching running statistics."""
    names = [name for name, _ in task.backbone.named_parameters()]
    shapes = [p.shape for p in task.backbone.parameters()]
    point = _flat(flat_parameters(task.backbone)).detach()

    def loss_of_vector(vector: Tensor) -> Tensor:
        pieces, offset = {}, 0
        for name, shape in zip(names, shapes):
            pieces[name] = vector[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        features = torch.func.functional_call(task.backbone, pieces, (torch.cat([views[0], views[1]]),))
        z1, z2 = task.head(features).chunk(2)
        from bissl.pretext.simclr import nt_xent

        return nt_xent(z1, z2, task.temperature)

    with differentiable_attention(), untracked_bn_stats(task):
        hessian = torch.autograd.functional.hessian(loss_of_vector, point, vectorize=True)
    assert isinstance(hessian, Tensor)
    return hessian


@pytest.fixture(scope="module")
def problem() -> tuple[SimCLR, Tensor, Tensor]:
    task = _pretext(torch.float64)
    views = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return task, views, _dense_hessian(task, views)


def _gradient(task: SimCLR, views: Tensor) -> Tensor:
    params = flat_parameters(task.backbone)
    with untracked_bn_stats(task):
        return _flat(torch.autograd.grad(task(views[0], views[1]), params))


@pytest.mark.parametrize("mode", HVP_MODES)
def test_vit_hvp_equals_dense_hessian_and_central_differences(
    problem: tuple[SimCLR, Tensor, Tensor], mode: str
) -> None:
    task, views, hessian = problem
    assert hessian.shape == (1400, 1400) and torch.allclose(hessian, hessian.T, atol=1e-9)
    params = flat_parameters(task.backbone)
    generator = torch.Generator().manual_seed(2)
    vectors = tuple(torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params)
    norm = _flat(vectors).norm()
    vectors = tuple(v / norm for v in vectors)  # a unit direction: eps is the length of the step
    with hessian_vector_operator(lambda: task(views[0], views[1]), params, mode, modules=[task]) as operator:
        product = _flat(operator.matvec(vectors))
    assert _relative_error(product, hessian @ _flat(vectors)) < 1e-10

    # The loss is strongly curved (truncation error 7e-7 at a step of 1e-4); rounding takes over below 3e-6.
    eps = 3e-6
    moved = copy.deepcopy(task)
    moved_params = flat_parameters(moved.backbone)
    gradients = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for target, source, v in zip(moved_params, params, vectors):
                target.copy_(source + sign * eps * v)
        gradients.append(_gradient(moved, views))
    central = (gradients[0] - gradients[1]) / (2 * eps)
    assert _relative_error(product, central) < 1e-8


def test_cpu_fused_attention_kernel_cannot_be_differentiated_twice_nor_forward_mode() -> None:
    """What the math-kernel scope is for. If PyTorch one day differentiates its fused kernels twice, this
    fails, and docs/vit.md should say so."""
    q, k, v = (torch.randn(1, 2, 5, 4, requires_grad=True) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    assert type(out.grad_fn).__name__ == FUSED_CPU_NODE  # the fast kernel by default, float32 on the CPU
    (first,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(
        RuntimeError, match=r"derivative for .*scaled_dot_product.*backward is not implemented"
    ):
        torch.autograd.grad(first.square().sum(), q)
    with pytest.raises(NotImplementedError, match="forward AD"):
        torch.func.jvp(
            lambda x: F.scaled_dot_product_attention(x, k, v), (q.detach(),), (torch.ones_like(q),)
        )
    with differentiable_attention():
        out = F.scaled_dot_product_attention(q, k, v)
    assert type(out.grad_fn).__name__ != FUSED_CPU_NODE
    (first,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    assert torch.autograd.grad(first.square().sum(), q)[0].abs().sum() > 0


def test_without_the_scope_a_vit_hvp_fails_on_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    task = _pretext(torch.float32)
    views = torch.randn(2, 4, 1, 8, 8)
    params = flat_parameters(task.backbone)
    monkeypatch.setattr(hvp_module, "differentiable_attention", contextlib.nullcontext)
    with pytest.raises(RuntimeError, match="not implemented"):
        hessian_vector_operator(lambda: task(views[0], views[1]), params, "reuse", modules=[task]).matvec(
            tuple(torch.ones_like(p) for p in params)
        )


class _AttentionSpy:
    """Wraps ``F.scaled_dot_product_attention`` (timm calls it through ``torch.nn.functional``): records, per
    call, whether the fused kernels were allowed and which backward node the output got."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[bool, str | None]] = []
        self.original: Callable[..., Tensor] = F.scaled_dot_product_attention
        monkeypatch.setattr(F, "scaled_dot_product_attention", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.original(*args, **kwargs)
        try:
            node = None if out.grad_fn is None else type(out.grad_fn).__name__
        except RuntimeError:  # a torch.func-wrapped tensor
            node = None
        self.calls.append((torch.backends.cuda.flash_sdp_enabled(), node))
        return out

    @contextlib.contextmanager
    def phase(self) -> Iterator[list[tuple[bool, str | None]]]:
        start = len(self.calls)
        seen: list[tuple[bool, str | None]] = []
        yield seen
        seen.extend(self.calls[start:])


def _assert_fused(calls: list[tuple[bool, str | None]]) -> None:
    assert calls and all(allowed and node == FUSED_CPU_NODE for allowed, node in calls), calls


def _assert_math(calls: list[tuple[bool, str | None]]) -> None:
    assert calls and all(not allowed and node != FUSED_CPU_NODE for allowed, node in calls), calls


@pytest.mark.parametrize("kind", [*HVP_MODES, "ggn-reuse", "ggn-recompute"])
def test_training_keeps_the_fused_kernel_and_products_use_the_math_kernel(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    spy = _AttentionSpy(monkeypatch)
    task = _pretext(torch.float32)
    task.head.requires_grad_(True)
    views = torch.randn(2, 6, 1, 8, 8)
    params = flat_parameters(task.backbone)
    vectors = tuple(torch.randn_like(p) for p in params)

    with spy.phase() as training:
        task(views[0], views[1]).backward()
    _assert_fused(training)

    with spy.phase() as products:
        if kind.startswith("ggn"):
            operator = gauss_newton_operator(
                lambda: task.gauss_newton_split(views[0], views[1]), params, kind[4:], modules=[task]
            )
        else:
            operator = hessian_vector_operator(lambda: task(views[0], views[1]), params, kind, modules=[task])
        first = _flat(operator.matvec(vectors))
        second = _flat(operator.matvec(vectors))
        operator.release()
    assert torch.allclose(first, second, rtol=1e-4, atol=1e-6) and first.abs().sum() > 0
    if kind == "forward-over-reverse":  # torch.func runs the products: no grad_fn to read, the flags only
        assert products and not any(allowed for allowed, _ in products)
    else:
        _assert_math(products)
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()

    with spy.phase() as after:
        task(views[0], views[1]).backward()
    _assert_fused(after)


def test_a_bilevel_alternation_on_a_vit_runs_lower_steps_fused_and_products_on_math(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trainer end to end: lower steps and the downstream gradients on the fused kernel, every product of
    the upper phase (each one a fresh forward in recompute mode) on the math kernel."""
    spy = _AttentionSpy(monkeypatch)
    torch.manual_seed(0)
    lower = SimCLR(_tiny_vit(torch.float32), 8, projector_hidden=(8,), projector_dim=4)
    upper_backbone = initial_models(lower, None)
    head = nn.Linear(8, 3)
    settings = BilevelConfig(
        alternations=1,
        lower_steps=2,
        upper_steps=2,
        solver_iterations=3,
        lower_batch_size=6,
        upper_batch_size=5,
        lower_warmup_steps=1,
        hvp_mode="recompute",
        tolerance=0.0,
    )
    generator = torch.Generator().manual_seed(3)

    def lower_batches() -> tuple[Tensor, Tensor]:
        return torch.randn(6, 1, 8, 8, generator=generator), torch.randn(6, 1, 8, 8, generator=generator)

    def upper_batches() -> tuple[Tensor, Tensor]:
        return torch.randn(5, 1, 8, 8, generator=generator), torch.randint(0, 3, (5,), generator=generator)

    trainer = BilevelTrainer(
        lower, upper_backbone, head, F.cross_entropy, lower_batches, upper_batches, settings
    )
    record = trainer.alternate()
    fused = [call for call in spy.calls if call[0]]
    math = [call for call in spy.calls if not call[0]]
    _assert_fused(fused)
    _assert_math(math)
    depth = 2
    assert len(math) == depth * record["products"]  # one forward per product, nothing else on math
    assert len(fused) >= depth * (settings.lower_steps + 2 * settings.upper_steps)
    assert all(torch.isfinite(torch.tensor(float(record[k]))) for k in ("lower_loss", "upper_loss_lower"))
