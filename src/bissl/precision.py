"""Mixed precision and memory layout for the forward passes of every stage.

``precision="bf16"`` runs forward passes under ``torch.autocast`` with bfloat16: parameters, gradients and
optimiser states stay float32, matrix products and convolutions run in bfloat16, losses and normalisations in
float32. ``"fp32"`` changes nothing. Hessian-vector products take their own setting (``hvp_precision``, float32
by default): second derivatives through bfloat16 activations are far less accurate than first ones.
``channels_last`` stores convolution weights (and inputs, when asked) as NHWC, the layout GPU tensor cores use.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar, overload

import torch
from torch import nn

from bissl.config import Config
from bissl.errors import ConfigError

PRECISIONS = ("fp32", "bf16")
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def autocast(
    target: Config | torch.device | str, precision: str | None = None
) -> AbstractContextManager[Any]:
    """A context for forward passes at ``precision`` (default: the config's ``precision``, else fp32).

    ``target`` is a config (its device is resolved) or the device the computation runs on. bf16 uses
    ``torch.autocast`` on that device type: CUDA, and the CPU too (slow on CPUs without bfloat16 units).
    """
    if isinstance(target, Config):
        from bissl.runtime import resolve_device

        device = resolve_device(target.device)
        precision = precision if precision is not None else target.precision
    else:
        device = torch.device(target)
    precision = precision if precision is not None else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@overload
def channels_last(item: ModuleT, enabled: bool = True, *, on_cpu: bool = False) -> ModuleT: ...


@overload
def channels_last(item: torch.Tensor, enabled: bool = True, *, on_cpu: bool = False) -> torch.Tensor: ...


def channels_last(
    item: nn.Module | torch.Tensor, enabled: bool = True, *, on_cpu: bool = False
) -> nn.Module | torch.Tensor:
    """``item`` in NHWC memory layout: a module's 4-D parameters and buffers in place, a 4-D tensor as a copy.

    Anything else, everything when ``enabled`` is false, and anything on the CPU unless ``on_cpu`` is returned
    unchanged: the layout gains nothing there, and PyTorch 2.14's CPU backward of strided 1x1 convolutions in
    NHWC corrupts memory with one thread.
    """
    if not enabled:
        return item
    if isinstance(item, nn.Module):
        first = next(item.parameters(), None)
        if first is not None and (on_cpu or first.device.type != "cpu"):
            item.to(memory_format=torch.channels_last)
        return item
    if item.dim() == 4 and (on_cpu or item.device.type != "cpu"):
        return item.contiguous(memory_format=torch.channels_last)
    return item


__all__ = ["PRECISIONS", "autocast", "channels_last"]
