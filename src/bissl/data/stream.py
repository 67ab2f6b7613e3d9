"""Batches of an in-memory dataset: an endless, resumable stream for training, finite epochs for evaluation.

BiSSL's lower and upper phases each continue their data stream where the previous alternation stopped
(docs/method.md: Pipeline), so a stream is an object with a position that survives checkpoints, not a DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from bissl.data.registry import TensorDataset
from bissl.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch, fixed by (seed, epoch) alone so that any epoch can be rebuilt."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(num_samples, generator=generator)


def stream_state(stream: Any) -> dict[str, Any]:
    """A stream's position and the sizes it was made for (shared by in-memory and disk streams)."""
    return {
        "epoch": stream.epoch,
        "position": stream.position,
        "seed": stream.seed,
        "batch_size": stream.batch_size,
        "world_size": stream.world_size,
        "num_samples": len(stream.dataset),
    }


def check_resumable(state: dict[str, Any], *, num_samples: int, batch_size: int, world_size: int) -> None:
    """Refuse to resume a stream saved for another dataset size, batch size or world size."""
    for key, current in (
        ("num_samples", num_samples),
        ("batch_size", batch_size),
        ("world_size", world_size),
    ):
        if int(state[key]) != current:
            raise DataError(
                f"cannot resume a data stream saved with {key}={state[key]} under {key}={current}; "
                "resume with the settings of the saved run"
            )


class BatchStream:
    """An endless stream of (uint8 images, labels) batches in a fresh seeded order every epoch.

    Incomplete final batches are dropped. With ``world_size`` > 1 all ranks share each epoch's permutation;
    a global batch holds ``batch_size * world_size`` samples and rank ``r`` takes its ``r``-th chunk of
    ``batch_size``. ``state_dict``/``load_state_dict`` carry epoch, position and seed, so a restored stream
    yields exactly the batches the original would have yielded next.
    """

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        preload: bool = False,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in a world of size {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        self.global_batch_size = batch_size * world_size
        if len(dataset) < self.global_batch_size:
            raise DataError(
                f"dataset {dataset.name!r} has {len(dataset)} samples, fewer than one batch of "
                f"{self.global_batch_size} ({batch_size} x {world_size} ranks); lower the batch size"
            )
        self.batches_per_epoch = len(dataset) // self.global_batch_size
        self.epoch = 0
        self.position = 0
        self._images = dataset.images.to(self.device) if preload else dataset.images
        self._labels = dataset.labels.to(self.device) if preload else dataset.labels
        self._order: torch.Tensor | None = None

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            self._order = epoch_permutation(len(self.dataset), self.seed, self.epoch).to(self._images.device)
        return self._order

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._order = None
        start = self.position * self.global_batch_size + self.rank * self.batch_size
        indices = self._epoch_order()[start : start + self.batch_size]
        self.position += 1
        images = self._images[indices].to(self.device, non_blocking=True)
        labels = self._labels[indices].to(self.device, non_blocking=True)
        return images, labels

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: epoch, batches taken in it, seed, and the sizes it was made for."""
        return stream_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; the dataset, batch size and world size must be the same."""
        check_resumable(
            state, num_samples=len(self.dataset), batch_size=self.batch_size, world_size=self.world_size
        )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = None


def epoch_batches(
    dataset: TensorDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """One pass over a dataset in batches (shuffled with ``seed`` when asked), moved to ``device``."""
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    count = len(dataset)
    order = epoch_permutation(count, seed, 0) if shuffle else torch.arange(count)
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        indices = order[start : start + batch_size]
        yield dataset.images[indices].to(device), dataset.labels[indices].to(device)
