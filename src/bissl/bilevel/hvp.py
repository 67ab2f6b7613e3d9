"""Hessian-vector products of the pretext loss w.r.t. the lower backbone (docs/method.md: Implicit gradient, Speed).

The Hessian batch, θ_P and φ_P stay fixed during an upper phase, so ``H`` is one fixed operator.
``hessian_vector_operator`` builds it in one of three ways:

- ``"recompute"``: forward and first-order graph rebuilt at every product (the reference's way).
- ``"reuse"``: first-order graph built once and differentiated again at every product until
  ``release()``. A trainer may build one operator per alternation (per-phase reuse: fewest forward
  passes, the graph is held for the whole upper phase) or one per upper step (per-step reuse: the
  graph is held for one CG solve only, so less time is spent holding its memory).
- ``"forward-over-reverse"``: ``torch.func.jvp`` of ``torch.func.grad`` at every product.

BatchNorm layers of ``modules`` use batch statistics as usual in train mode, but their running
statistics are left untouched unless ``update_bn_stats=True`` restores the reference's side effect.

Attention (``F.scaled_dot_product_attention``, as in timm's ViTs) runs on the math kernel inside every
forward that builds a graph to be differentiated twice, and inside every product
(``differentiable_attention``): the fused kernels (flash, memory-efficient, cuDNN, and the CPU flash
kernel) have backward passes without derivatives of their own, nor forward-mode derivatives
(docs/vit.md). Everywhere else the fastest kernel is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bissl.models.batchnorm import batch_norm_layers, untracked_bn_stats

Vectors = tuple[Tensor, ...]
LossFn = Callable[[], Tensor]

HVP_MODES = ("recompute", "reuse", "forward-over-reverse")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def differentiable_attention() -> Iterator[None]:
    """Scaled-dot-product attention on the math kernel inside, whatever the device and dtype.

    The math kernel is attention written in differentiable operations, so a graph built through it can be
    differentiated again (reverse over reverse) and traced forward-mode (``torch.func.jvp``). PyTorch's
    fused kernels cannot: their backward operations have no derivative formulas (double backward raises
    "derivative for aten::_scaled_dot_product_*_backward is not implemented") and they have no forward-mode
    rule. The selection is PyTorch's process-wide SDPA flags, set on entry and restored on exit, so code
    outside (training forwards) keeps the fastest kernel. A no-op for models without attention.
    """
    with sdpa_kernel([SDPBackend.MATH]):
        yield


@contextmanager
def frozen_bn_stats(*modules: nn.Module) -> Iterator[None]:
    """Save the BatchNorm running statistics of ``modules`` and restore them bit-identically on exit.

    Only buffers that changed are written back (in place, so a graph that saved them becomes stale, as it
    already was after the change); unchanged buffers are not touched, so graphs that saved them stay valid.
    """
    saved = [
        (
            layer,
            {name: getattr(layer, name).clone() for name in _BN_BUFFERS if getattr(layer, name) is not None},
        )
        for layer in batch_norm_layers(*modules)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, buffers in saved:
                for name, value in buffers.items():
                    current = getattr(layer, name)
                    if not torch.equal(current, value):
                        current.copy_(value)


def _zeros_for_unused(grads: Sequence[Tensor | None], params: Vectors) -> Vectors:
    """Replace the ``None`` that autograd returns for parameters the loss does not use by zeros."""
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))


def _second_derivative(grads: Vectors, params: Vectors, vectors: Vectors, *, retain_graph: bool) -> Vectors:
    """d/dθ <grads(θ), v>: one reverse pass through the first-order graph (grads without a graph give 0)."""
    pairs = [(g, v) for g, v in zip(grads, vectors) if g.requires_grad]
    if not pairs:
        return tuple(torch.zeros_like(p) for p in params)
    outputs, grad_outputs = zip(*pairs)
    products = torch.autograd.grad(
        outputs, params, grad_outputs=grad_outputs, retain_graph=retain_graph, allow_unused=True
    )
    return _zeros_for_unused(products, params)


class HessianVectorOperator:
    """``matvec(v) = H v`` for the Hessian of ``loss_fn()`` w.r.t. ``params`` (see the module docstring).

    ``loss_fn`` must be deterministic (same batch, same views, no dropout); ``modules`` are the modules
    whose BatchNorm running statistics must be preserved (the lower backbone and the pretext head).
    """

    mode = "base"

    def __init__(
        self,
        loss_fn: LossFn,
        params: Sequence[Tensor],
        *,
        modules: Sequence[nn.Module] = (),
        update_bn_stats: bool = False,
    ) -> None:
        self.loss_fn = loss_fn
        self.params: Vectors = tuple(params)
        self.modules = tuple(modules)
        self.update_bn_stats = update_bn_stats
        self.products = 0

    def _update_stats_once(self) -> None:
        """The reference's running-statistics update, in a forward of its own: no kept graph saves the buffers."""
        with torch.no_grad():
            self.loss_fn()

    def _check(self, vectors: Sequence[Tensor]) -> Vectors:
        vectors = tuple(vectors)
        if len(vectors) != len(self.params) or any(v.shape != p.shape for v, p in zip(vectors, self.params)):
            raise ValueError("HVP vectors must be a tuple of tensors shaped like the parameters")
        return vectors

    def matvec(self, vectors: Sequence[Tensor]) -> Vectors:
        """H v for a tuple ``v`` shaped like ``params``; the result is detached."""
        vectors = self._check(vectors)
        self.products += 1
        with differentiable_attention():
            return tuple(product.detach() for product in self._product(vectors))

    def _product(self, vectors: Vectors) -> Vectors:
        raise NotImplementedError

    def __call__(self, vectors: Sequence[Tensor]) -> Vectors:
        return self.matvec(vectors)

    def release(self) -> None:
        """Free whatever the operator holds (the first-order graph in ``"reuse"`` mode)."""

    def __enter__(self) -> HessianVectorOperator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RecomputeHVP(HessianVectorOperator):
    """Forward, first-order graph and second reverse pass at every product (the reference's way)."""

    mode = "recompute"

    def _forward(self) -> Tensor:
        """The loss on the Hessian batch, updating running statistics only if asked to."""
        if self.update_bn_stats:
            return self.loss_fn()
        with untracked_bn_stats(*self.modules):
            return self.loss_fn()

    def _product(self, vectors: Vectors) -> Vectors:
        with torch.enable_grad():
            grads = torch.autograd.grad(self._forward(), self.params, create_graph=True, allow_unused=True)
            return _second_derivative(
                _zeros_for_unused(grads, self.params), self.params, vectors, retain_graph=False
            )


class ReuseHVP(HessianVectorOperator):
    """First-order graph built once at construction, differentiated again at every product."""

    mode = "reuse"

    def __init__(
        self,
        loss_fn: LossFn,
        params: Sequence[Tensor],
        *,
        modules: Sequence[nn.Module] = (),
        update_bn_stats: bool = False,
    ) -> None:
        super().__init__(loss_fn, params, modules=modules, update_bn_stats=update_bn_stats)
        if update_bn_stats:
            self._update_stats_once()
        with torch.enable_grad(), untracked_bn_stats(*self.modules), differentiable_attention():
            grads = torch.autograd.grad(self.loss_fn(), self.params, create_graph=True, allow_unused=True)
        self._grads: Vectors | None = _zeros_for_unused(grads, self.params)

    def _product(self, vectors: Vectors) -> Vectors:
        if self._grads is None:
            raise RuntimeError("this Hessian-vector operator was released; build a new one")
        with torch.enable_grad():
            return _second_derivative(self._grads, self.params, vectors, retain_graph=True)

    def release(self) -> None:
        self._grads = None


class _LossHolder(nn.Module):
    """Holds ``modules`` as submodules so ``torch.func.functional_call`` can swap their parameters."""

    def __init__(self, loss_fn: LossFn, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self._loss_fn = loss_fn

    def forward(self) -> Tensor:
        return self._loss_fn()


class ForwardOverReverseHVP(HessianVectorOperator):
    """``torch.func.jvp`` of ``torch.func.grad`` at every product; ``modules`` must hold every parameter."""

    mode = "forward-over-reverse"

    def __init__(
        self,
        loss_fn: LossFn,
        params: Sequence[Tensor],
        *,
        modules: Sequence[nn.Module] = (),
        update_bn_stats: bool = False,
    ) -> None:
        super().__init__(loss_fn, params, modules=modules, update_bn_stats=update_bn_stats)
        self._holder = _LossHolder(loss_fn, self.modules)
        names_by_id = {id(p): name for name, p in self._holder.named_parameters(remove_duplicate=False)}
        missing = [index for index, p in enumerate(self.params) if id(p) not in names_by_id]
        if missing:
            raise ValueError(
                "mode='forward-over-reverse' needs modules= to contain every parameter in params "
                f"(parameters {missing} were not found)"
            )
        self._names = [names_by_id[id(p)] for p in self.params]
        if update_bn_stats:
            self._update_stats_once()

    def _loss_of(self, *params: Tensor) -> Tensor:
        return torch.func.functional_call(self._holder, dict(zip(self._names, params)), ())

    def _product(self, vectors: Vectors) -> Vectors:
        primals = tuple(p.detach() for p in self.params)
        gradient = torch.func.grad(self._loss_of, argnums=tuple(range(len(primals))))
        with untracked_bn_stats(*self.modules):
            tangents_out = torch.func.jvp(gradient, primals, vectors)[1]
        return tuple(tangents_out)


_OPERATORS: dict[str, type[HessianVectorOperator]] = {
    "recompute": RecomputeHVP,
    "reuse": ReuseHVP,
    "forward-over-reverse": ForwardOverReverseHVP,
}


def hessian_vector_operator(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    mode: str = "reuse",
    *,
    modules: Sequence[nn.Module] = (),
    update_bn_stats: bool = False,
) -> HessianVectorOperator:
    """The Hessian of ``loss_fn()`` w.r.t. ``params`` as an operator with ``matvec`` and ``release``.

    ``mode`` is one of ``HVP_MODES``; ``modules`` lists the modules whose BatchNorm running statistics
    the products must not change (with ``update_bn_stats=True`` they change as in the reference: at
    every product for "recompute", once at construction for "reuse" and "forward-over-reverse").
    """
    if mode not in _OPERATORS:
        raise ValueError(f"HVP mode {mode!r} is not one of {', '.join(HVP_MODES)}")
    return _OPERATORS[mode](loss_fn, params, modules=modules, update_bn_stats=update_bn_stats)


def flat_parameters(module: nn.Module) -> Vectors:
    """The parameters of ``module`` that require gradients, in ``parameters()`` order."""
    return tuple(p for p in module.parameters() if p.requires_grad)
