"""Frozen-backbone feature extraction for k-NN, linear probes and t-SNE."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

ImageBatch = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]
ImageBatches = torch.Tensor | Iterable[ImageBatch] | Callable[[], Iterable[ImageBatch]]


def _iterate_batches(images: ImageBatches, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield image batches from a tensor (sliced), an iterable of batches, or a callable returning one.

    A batch that is a tuple or list (e.g. images and labels from a loader) contributes its first element.
    """
    if isinstance(images, torch.Tensor):
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    batches = images() if callable(images) else images
    for batch in batches:
        yield batch[0] if isinstance(batch, tuple | list) else batch


def extract_features(
    backbone: nn.Module,
    images: ImageBatches,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Backbone features (N, D) as float32 on the CPU, computed in eval mode without gradients.

    ``transform`` (e.g. uint8 to normalised float) runs on each batch after it moved to ``device``
    (default: the backbone's device). Every submodule's train/eval flag is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if device is None:
        first_parameter = next(backbone.parameters(), None)
        device = first_parameter.device if first_parameter is not None else torch.device("cpu")
    previous_modes = [(module, module.training) for module in backbone.modules()]
    backbone.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for batch in _iterate_batches(images, batch_size):
                batch = batch.to(device, non_blocking=True)
                if transform is not None:
                    batch = transform(batch)
                chunks.append(backbone(batch).float().cpu())
    finally:
        for module, was_training in previous_modes:
            module.training = was_training
    if not chunks:
        raise ValueError("extract_features got no images")
    return torch.cat(chunks)
