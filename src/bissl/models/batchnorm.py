"""BatchNorm running statistics recomputed at a model's current weights, and forwards that leave them alone.

Running averages are updated by train-mode forward passes *before* each optimiser step, with a momentum
that remembers about ten steps. When the weights move quickly (the BiSSL upper level takes few, large,
clipped steps per alternation), those averages describe weights that no longer exist, and every eval-mode
number of the model is wrong although its train-mode loss is fine. ``recompute_batchnorm_statistics``
replaces them by the exact average over a pass of data at the weights as they are now.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm_layers(*modules: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers inside ``modules`` that keep running statistics, each once."""
    found: dict[int, _BatchNorm] = {}
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, _BatchNorm) and layer.track_running_stats:
                found.setdefault(id(layer), layer)
    return list(found.values())


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def untracked_bn_stats(*modules: nn.Module) -> Iterator[None]:
    """Run train-mode BatchNorm layers of ``modules`` on batch statistics without reading or writing
    their running statistics; the buffers (same tensor objects) are put back on exit.

    The outputs equal those of a normal train-mode forward; nothing is written, so graphs built
    inside stay valid and ``torch.func`` transforms see no in-place buffer updates.
    """
    detached: list[tuple[_BatchNorm, dict[str, Tensor | None]]] = []
    for layer in batch_norm_layers(*modules):
        if layer.training:
            detached.append((layer, {name: getattr(layer, name) for name in _BN_BUFFERS}))
            for name in _BN_BUFFERS:
                setattr(layer, name, None)
    try:
        yield
    finally:
        for layer, buffers in detached:
            for name, value in buffers.items():
                setattr(layer, name, value)


@torch.no_grad()
def recompute_batchnorm_statistics(module: nn.Module, batches: Iterable[Tensor]) -> int:
    """Reset the running mean and variance of every BatchNorm layer of ``module`` and refill them with the
    average over ``batches`` (train-mode forward passes without gradients). Returns the images seen.

    Each batch counts once (a cumulative average, as with ``momentum=None``). Parameters, the training
    flags of all submodules and the layers' momenta are left as they were; a module without BatchNorm is
    not run at all. Under SyncBatchNorm every process must pass the same number of batches.
    """
    layers = batch_norm_layers(module)
    if not layers:
        return 0
    modes = [(m, m.training) for m in module.modules()]
    momenta = [layer.momentum for layer in layers]
    images = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
        module.train()
        for batch in batches:
            module(batch)
            images += len(batch)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for submodule, was_training in modes:
            submodule.training = was_training
    if images == 0:
        raise ValueError("recompute_batchnorm_statistics needs at least one batch")
    return images


__all__ = ["batch_norm_layers", "recompute_batchnorm_statistics", "untracked_bn_stats"]
