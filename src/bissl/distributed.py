"""torch.distributed glue: process-group set-up from torchrun's environment, flat all-reduce, gathers that
stay differentiable to any order, a SyncBatchNorm that Hessian-vector products can pass through, and the
small agreements (skip a step, stop) that keep every rank in lockstep.

Everything here is a no-op in a single process, so callers never branch on the world size.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str | None = None) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); NCCL on GPUs, gloo on CPUs."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def shutdown() -> None:
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    """Where small bookkeeping tensors must live for the backend (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_flat(tensors: Sequence[Tensor], *, average: bool = True) -> tuple[Tensor, ...]:
    """Sum (or average) a tuple of tensors across ranks with ONE all-reduce over their concatenation."""
    if not is_distributed() or not tensors:
        return tuple(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    if average:
        flat /= world_size()
    out: list[Tensor] = []
    offset = 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return tuple(out)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the ``.grad`` of parameters that no DDP wrapper covers, in one flat all-reduce (missing
    gradients count as zeros, so every rank sends the same layout)."""
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    for p, averaged in zip(params, all_reduce_flat(grads), strict=True):
        p.grad = averaged.clone()


def _gather_rows(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` stacked along dim 0, in rank order (equal shapes on every rank)."""
    with torch.no_grad():
        tensor = tensor.detach().contiguous()
        out = tensor.new_empty((world_size() * tensor.shape[0], *tensor.shape[1:]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, tensor)
    return out


def _sum_scatter_rows(tensor: Tensor) -> Tensor:
    """The sum over ranks of ``tensor``, of which this rank keeps its own block of rows."""
    with torch.no_grad():
        tensor = tensor.detach().contiguous()
        out = tensor.new_empty((tensor.shape[0] // world_size(), *tensor.shape[1:]))
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        scatter(out, tensor)
    return out


class _GatherRows(torch.autograd.Function):
    """Differentiable all-gather along dim 0; its adjoint is ``_SumScatterRows`` and vice versa, so the
    graph of a backward pass can be differentiated again (Hessian-vector products)."""

    @staticmethod
    def forward(tensor: Tensor) -> Tensor:
        return _gather_rows(tensor)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _SumScatterRows.apply(grad)

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor) -> Tensor:
        return _GatherRows.apply(tangent)


class _SumScatterRows(torch.autograd.Function):
    """Differentiable reduce-scatter (sum) along dim 0: the adjoint of ``_GatherRows``."""

    @staticmethod
    def forward(tensor: Tensor) -> Tensor:
        return _sum_scatter_rows(tensor)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _GatherRows.apply(grad)

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor) -> Tensor:
        return _SumScatterRows.apply(tangent)


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, differentiably to any order.

    Every rank must pass the same shape. The backward pass sums, over ranks, the gradient that each rank's
    loss sends to this rank's rows: with DDP's averaging this gives the gradient of the mean of the ranks'
    losses, which is the single-process gradient when each rank's loss is its share of a global mean.
    """
    if not is_distributed():
        return tensor
    gathered: Tensor = _GatherRows.apply(tensor)
    return gathered


def gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 as a constant (no gradient flows back); the tensor
    itself in a single process. Every rank must pass the same shape."""
    if not is_distributed():
        return tensor.detach()
    return _gather_rows(tensor)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the batch concatenated over all ranks.

    Unlike ``torch.nn.SyncBatchNorm`` it runs on CPUs (gloo) as well as GPUs, is built from differentiable
    collectives (so the first-order graph of a loss through it can be differentiated again, as HVPs need),
    and accepts running statistics set to ``None`` (batch statistics without tracking). Per-rank means and
    sums of squares are combined with the parallel-variance formula in one all-gather per layer and forward.
    Its state dict matches BatchNorm's, so checkpoints load into plain BatchNorm layers.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects at least 2-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        values = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        local_count = values.numel() // channels
        local_mean = values.mean(dims)
        local_squares = (values - local_mean.view(shape)).pow(2).sum(dims)
        count = torch.full((1,), float(local_count), dtype=values.dtype, device=values.device)
        stats = gather_with_grad(torch.cat([local_mean, local_squares, count]).unsqueeze(0))
        means, squares, counts = stats[:, :channels], stats[:, channels : 2 * channels], stats[:, -1:]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        sum_squares = (squares + counts * (means - mean).pow(2)).sum(0)
        variance = sum_squares / total
        self._track(mean.detach(), sum_squares.detach(), float(total.detach()))
        out = (values - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.weight is not None and self.bias is not None:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)

    @torch.no_grad()
    def _track(self, mean: Tensor, sum_squares: Tensor, total: float) -> None:
        """Update running statistics as BatchNorm does (unbiased variance), unless they are switched off."""
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        unbiased = sum_squares / max(total - 1.0, 1.0)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer inside ``module`` by ``SyncBatchNorm``, in place, keeping the same
    parameter and buffer tensors (optimisers and references built earlier stay valid). Returns ``module``,
    or the replacement when ``module`` itself is a BatchNorm layer."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        replacement = SyncBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        if module.affine:
            replacement.weight = module.weight
            replacement.bias = module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(replacement, name, getattr(module, name))
        replacement.train(module.training)
        return replacement
    for name, child in list(module.named_children()):
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def broadcast_object(value: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reseed_per_rank(seed: int) -> None:
    """Give every rank its own random stream (augmentations draw from it) once the models were built
    identically; a single process keeps its stream, so its numbers do not depend on this call."""
    if world_size() <= 1:
        return
    value = int(np.random.SeedSequence([seed, rank()]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def per_rank(value: Any) -> Any:
    """Every rank's ``value`` in rank order (a list), for rank 0 to write into a checkpoint; ``value`` itself
    in a single process, so single-process checkpoints keep their layout."""
    if not is_distributed():
        return value
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def own_entry(saved: Any) -> Any:
    """This rank's entry of what ``per_rank`` gathered; a value saved by a single process is used as is."""
    if isinstance(saved, list):
        return saved[rank()] if rank() < len(saved) else saved[0]
    return saved


def average_scalar(value: float) -> float:
    """Mean of a Python number over ranks (for logging)."""
    return average_scalars([value])[0]


def average_scalars(values: Sequence[float]) -> list[float]:
    """Means of Python numbers over ranks in one all-reduce (for logging per-rank losses)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return [float(v) / world_size() for v in tensor.tolist()]


def agree_finite(value: Tensor | float) -> Tensor:
    """``value`` where it is finite on every rank, NaN otherwise: a skip-step decision taken on it (a loss
    check before backward) is then the same on every rank, so no rank waits in a collective alone."""
    tensor = torch.as_tensor(value)
    if not is_distributed():
        return tensor
    flag = torch.isfinite(tensor).all().to(device=_collective_device(), dtype=torch.float32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return tensor if bool(flag.item()) else torch.full_like(tensor, float("nan"))


class StopFlag(Protocol):
    """What ``agree_stop`` needs of a stop handler: the signal number it caught, or None."""

    signum: int | None


def agree_stop(stop: StopFlag) -> bool:
    """True on every rank once any rank caught a stop signal; the signal is then copied to this rank's
    ``stop``, so every rank writes the checkpoint and leaves at the same step."""
    if not is_distributed():
        return stop.signum is not None
    caught = torch.tensor([stop.signum or 0], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(caught, op=dist.ReduceOp.MAX)
    signum = int(caught.item())
    if signum and stop.signum is None:
        stop.signum = signum
    return bool(signum)
