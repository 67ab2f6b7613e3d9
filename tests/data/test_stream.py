"""Batch streams: per-epoch reshuffle, exact resume, sharding across ranks; finite epoch iteration."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from bissl.data.registry import TensorDataset
from bissl.data.stream import BatchStream, epoch_batches
from bissl.errors import DataError


def numbered_dataset(count: int = 23) -> TensorDataset:
    """Each sample's label is its index, and its pixels hold the index too, so batches show what they hold."""
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2).contiguous()
    return TensorDataset(images, torch.arange(count), num_classes=count, name="numbered")


def take(stream: BatchStream, count: int) -> list[list[int]]:
    return [next(stream)[1].tolist() for _ in range(count)]


def flatten(batches: list[list[int]]) -> list[int]:
    return [index for batch in batches for index in batch]


def labels_of(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> list[list[int]]:
    return [labels.tolist() for _, labels in batches]


def test_batches_are_uint8_and_consistent() -> None:
    stream = BatchStream(numbered_dataset(), 5, seed=0)
    images, labels = next(stream)
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 2, 2)
    assert images[:, 0, 0, 0].to(torch.int64).tolist() == labels.tolist()


def test_each_epoch_is_a_fresh_permutation_without_the_ragged_end() -> None:
    stream = BatchStream(numbered_dataset(23), 5, seed=0)
    assert stream.batches_per_epoch == 4
    epochs = [flatten(take(stream, 4)) for _ in range(3)]
    for order in epochs:
        assert len(order) == 20 and len(set(order)) == 20
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert stream.epoch == 2 and stream.position == 4
    other_seed = BatchStream(numbered_dataset(23), 5, seed=1)
    assert flatten(take(other_seed, 4)) != epochs[0]


@pytest.mark.parametrize("stop_after", [0, 2, 4, 7])
def test_resume_continues_exactly(stop_after: int) -> None:
    uninterrupted = take(BatchStream(numbered_dataset(), 5, seed=3), stop_after + 9)
    first = BatchStream(numbered_dataset(), 5, seed=3)
    take(first, stop_after)
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = BatchStream(numbered_dataset(), 5, seed=999)
    resumed.load_state_dict(saved)
    assert take(resumed, 9) == uninterrupted[stop_after:]


def test_resume_with_other_sizes_is_refused() -> None:
    saved = BatchStream(numbered_dataset(), 5).state_dict()
    with pytest.raises(DataError, match="batch_size=5"):
        BatchStream(numbered_dataset(), 4).load_state_dict(saved)
    with pytest.raises(DataError, match="num_samples=23"):
        BatchStream(numbered_dataset(30), 5).load_state_dict(saved)


def test_ranks_take_disjoint_chunks_of_the_global_batch() -> None:
    dataset = numbered_dataset(24)
    single = take(BatchStream(dataset, 6, seed=2), 5)
    rank0 = take(BatchStream(dataset, 3, seed=2, rank=0, world_size=2), 5)
    rank1 = take(BatchStream(dataset, 3, seed=2, rank=1, world_size=2), 5)
    for whole, part0, part1 in zip(single, rank0, rank1):
        assert part0 + part1 == whole


def test_bad_stream_settings() -> None:
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchStream(numbered_dataset(5), 4, world_size=2)
    with pytest.raises(DataError, match="rank"):
        BatchStream(numbered_dataset(), 2, rank=2, world_size=2)
    with pytest.raises(DataError, match="batch size"):
        BatchStream(numbered_dataset(), 0)


def test_preloaded_stream_gives_the_same_batches() -> None:
    plain = take(BatchStream(numbered_dataset(), 4, seed=5), 8)
    assert take(BatchStream(numbered_dataset(), 4, seed=5, preload=True), 8) == plain


def test_epoch_batches_cover_every_sample_once() -> None:
    dataset = numbered_dataset(23)
    ordered = labels_of(epoch_batches(dataset, 5))
    assert flatten(ordered) == list(range(23)) and len(ordered[-1]) == 3
    assert flatten(labels_of(epoch_batches(dataset, 5, drop_last=True))) == list(range(20))
    shuffled = flatten(labels_of(epoch_batches(dataset, 5, shuffle=True, seed=1)))
    assert sorted(shuffled) == list(range(23)) and shuffled != list(range(23))
    assert flatten(labels_of(epoch_batches(dataset, 5, shuffle=True, seed=1))) == shuffled
