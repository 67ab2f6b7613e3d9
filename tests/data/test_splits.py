"""Train/validation splits: deterministic, stratified, saved and reused from a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bissl.data.embedded import synthetic_dataset
from bissl.data.registry import TensorDataset
from bissl.data.splits import load_split, save_split, split_dataset, train_val_split
from bissl.errors import DataError


def test_split_is_a_deterministic_partition() -> None:
    train, val = train_val_split(103, 0.2, seed=5)
    assert len(val) == round(103 * 0.2) and len(train) == 103 - len(val)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(103))
    assert train.dtype == torch.int64 and torch.equal(train, train.sort().values)
    again_train, again_val = train_val_split(103, 0.2, seed=5)
    assert torch.equal(again_train, train) and torch.equal(again_val, val)
    assert not torch.equal(train_val_split(103, 0.2, seed=6)[1], val)


def test_split_is_stratified() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    _, val = train_val_split(100, 0.1, seed=0, stratify_labels=labels)
    assert torch.bincount(labels[val], minlength=3).tolist() == [5, 3, 2]
    uneven = torch.tensor([0] * 7 + [1] * 7 + [2] * 7)
    _, val = train_val_split(21, 0.5, seed=3, stratify_labels=uneven)
    counts = torch.bincount(uneven[val], minlength=3)
    assert int(counts.sum()) == round(21 * 0.5) and bool(((counts - 3.5).abs() <= 0.5).all())
    random_counts = [
        torch.bincount(labels[train_val_split(100, 0.1, seed=s)[1]], minlength=3).tolist() for s in range(20)
    ]
    assert any(counts != [5, 3, 2] for counts in random_counts)


def test_zero_fraction_and_bad_fractions() -> None:
    train, val = train_val_split(10, 0.0, seed=0)
    assert len(train) == 10 and len(val) == 0
    for fraction in (-0.1, 1.0, 1.5):
        with pytest.raises(DataError, match="fraction"):
            train_val_split(10, fraction, seed=0)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    train, val = train_val_split(40, 0.25, seed=1)
    path = tmp_path / "run" / "split.json"
    save_split(path, train, val, {"dataset": "x", "num_samples": 40, "seed": 1})
    loaded_train, loaded_val, meta = load_split(path)
    assert torch.equal(loaded_train, train) and torch.equal(loaded_val, val)
    assert meta["dataset"] == "x" and meta["num_samples"] == 40
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]


def test_damaged_split_files(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        load_split(path)
    path.write_text(json.dumps({"format": "bissl-split", "num_samples": 4, "train": [0, 1, 1], "val": [3]}))
    with pytest.raises(DataError, match="repeated"):
        load_split(path)
    path.write_text(json.dumps({"format": "bissl-split", "num_samples": 4, "train": [0, 1, 2], "val": [4]}))
    with pytest.raises(DataError, match="out-of-range"):
        load_split(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="not a bissl split"):
        load_split(path)


def test_split_dataset_writes_then_reuses(tmp_path: Path) -> None:
    dataset = synthetic_dataset(60, 3, 1, 4, seed=0)
    path = tmp_path / "split.json"
    train, val = split_dataset(dataset, 0.2, seed=0, path=path)
    assert path.exists() and len(val) == 12 and len(train) == 48
    assert torch.bincount(val.labels, minlength=3).tolist() == [4, 4, 4]
    reused_train, reused_val = split_dataset(dataset, 0.2, seed=99, path=path)
    assert torch.equal(reused_val.images, val.images) and torch.equal(reused_train.labels, train.labels)
    fresh_val = split_dataset(dataset, 0.2, seed=99)[1]
    assert not torch.equal(fresh_val.images, val.images)


def test_split_file_for_another_dataset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    split_dataset(synthetic_dataset(60, 3, 1, 4, seed=0), 0.2, seed=0, path=path)
    with pytest.raises(DataError, match="60 samples") as info:
        split_dataset(synthetic_dataset(50, 3, 1, 4, seed=0), 0.2, seed=0, path=path)
    assert "\n" not in str(info.value)
    renamed = synthetic_dataset(60, 3, 1, 4, seed=0, name="other")
    with pytest.raises(DataError, match="'synthetic'"):
        split_dataset(renamed, 0.2, seed=0, path=path)


def test_multilabel_split_is_random_but_complete() -> None:
    labels = (torch.rand(30, 4) < 0.5).to(torch.float32)
    dataset = TensorDataset(
        torch.zeros(30, 1, 2, 2, dtype=torch.uint8), labels, num_classes=4, multilabel=True
    )
    train, val = split_dataset(dataset, 0.3, seed=0)
    assert len(train) == 21 and len(val) == 9 and val.labels.shape == (9, 4)
