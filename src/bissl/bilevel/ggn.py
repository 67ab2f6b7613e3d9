"""Generalised Gauss–Newton products G v = Jᵀ (∇²ℓ) J v of the pretext loss (docs/method.md: Indefinite systems).

The loss is split as ℓ(outputs(θ)) where ℓ is convex (the pretext task knows where: see
``PretextTask.gauss_newton_split``); J = ∂outputs/∂θ over the backbone parameters. G is positive
semi-definite, so I + G/(λ+δ) is SPD and CG converges on it.

J v comes from the double-vjp trick: g(u) = Jᵀ u is built with a graph (linear in a dummy u), and
J v = ∂⟨g(u), v⟩/∂u. Then Jᵀ (∇²ℓ J v) is one more reverse pass through the output graph.

- ``"reuse"``: outputs and g(u) are built once at construction and differentiated again at every
  product until ``release()`` (the Hessian batch and θ_P do not change during an upper phase).
- ``"recompute"``: the forward pass and g(u) are rebuilt at every product.

BatchNorm layers of ``modules`` run on batch statistics and their running statistics stay untouched,
as for the Hessian operators (``update_bn_stats=True`` restores the reference's side effect); attention
runs on the math kernel while graphs are built and differentiated, as there (``differentiable_attention``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from bissl.bilevel.hvp import HessianVectorOperator, Vectors, differentiable_attention, untracked_bn_stats

OuterHVP = Callable[[Tensor], Tensor]
SplitFn = Callable[[], tuple[Tensor, OuterHVP]]

GGN_MODES = ("reuse", "recompute")


class _OutputGraph:
    """outputs(θ), the outer Hessian-vector product at them, and g(u) = Jᵀ u with a graph in u."""

    def __init__(self, outputs: Tensor, outer_hvp: OuterHVP, params: Vectors) -> None:
        if not outputs.requires_grad:
            raise ValueError("the Gauss–Newton split's outputs must be computed from the parameters")
        self.outputs = outputs
        self.outer_hvp = outer_hvp
        self.params = params
        self.dummy = torch.zeros_like(outputs, requires_grad=True)
        transposed = torch.autograd.grad(
            outputs, params, grad_outputs=self.dummy, create_graph=True, allow_unused=True
        )
        self.transposed = tuple(transposed)

    def product(self, vectors: Vectors, *, keep: bool) -> Vectors:
        """Jᵀ (∇²ℓ) J v; ``keep`` retains both graphs for further products."""
        pairs = [(g, v) for g, v in zip(self.transposed, vectors) if g is not None and g.requires_grad]
        if not pairs:
            return tuple(torch.zeros_like(p) for p in self.params)
        gradients, tangents = zip(*pairs)
        (jacobian_vector,) = torch.autograd.grad(
            gradients, self.dummy, grad_outputs=tangents, retain_graph=True, allow_unused=True
        )
        if jacobian_vector is None:
            return tuple(torch.zeros_like(p) for p in self.params)
        curvature_vector = self.outer_hvp(jacobian_vector.detach()).detach().to(self.outputs.dtype)
        products = torch.autograd.grad(
            self.outputs, self.params, grad_outputs=curvature_vector, retain_graph=keep, allow_unused=True
        )
        return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(products, self.params))


class GaussNewtonOperator(HessianVectorOperator):
    """``matvec(v) = Jᵀ (∇²ℓ) J v`` for the split ``split_fn() = (outputs, outer_hvp)`` (module docstring).

    ``split_fn`` must be deterministic (same batch, same views); ``modules`` are the modules whose
    BatchNorm running statistics must be preserved.
    """

    def __init__(
        self,
        split_fn: SplitFn,
        params: Sequence[Tensor],
        mode: str = "reuse",
        *,
        modules: Sequence[nn.Module] = (),
        update_bn_stats: bool = False,
    ) -> None:
        if mode not in GGN_MODES:
            raise ValueError(f"Gauss–Newton mode {mode!r} is not one of {', '.join(GGN_MODES)}")
        super().__init__(lambda: split_fn()[0], params, modules=modules, update_bn_stats=update_bn_stats)
        self.split_fn = split_fn
        self.mode = mode
        self._graph: _OutputGraph | None = None
        if mode == "reuse":
            if update_bn_stats:
                self._update_stats_once()
            self._graph = self._build(track_stats=False)

    def _build(self, *, track_stats: bool) -> _OutputGraph:
        """The forward and g(u) on the math attention kernel: both are differentiated again."""
        with torch.enable_grad(), differentiable_attention():
            if track_stats:
                outputs, outer_hvp = self.split_fn()
            else:
                with untracked_bn_stats(*self.modules):
                    outputs, outer_hvp = self.split_fn()
            return _OutputGraph(outputs, outer_hvp, self.params)

    def _product(self, vectors: Vectors) -> Vectors:
        with torch.enable_grad():
            if self.mode == "recompute":
                return self._build(track_stats=self.update_bn_stats).product(vectors, keep=False)
            if self._graph is None:
                raise RuntimeError("this Gauss–Newton operator was released; build a new one")
            return self._graph.product(vectors, keep=True)

    def release(self) -> None:
        self._graph = None


def gauss_newton_operator(
    split_fn: SplitFn,
    params: Sequence[Tensor],
    mode: str = "reuse",
    *,
    modules: Sequence[nn.Module] = (),
    update_bn_stats: bool = False,
) -> GaussNewtonOperator:
    """The Gauss–Newton matrix of the split loss w.r.t. ``params`` as an operator with ``matvec`` and
    ``release``; ``mode`` is one of ``GGN_MODES``, ``modules`` as for ``hessian_vector_operator``."""
    return GaussNewtonOperator(split_fn, params, mode, modules=modules, update_bn_stats=update_bn_stats)
