"""Datasets: the IDX reader, Fashion-MNIST lookup and errors, digits, synthetic data, the registry."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bissl.data import embedded as datasets
from bissl.data import registry
from bissl.data.embedded import FASHION_MNIST_FILES, read_idx, synthetic_dataset
from bissl.data.registry import (
    DATASETS,
    DatasetInfo,
    TensorDataset,
    channel_stats,
    dataset_names,
    load_dataset,
    register_dataset,
)
from bissl.errors import DataError

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> Path:
    """Write an IDX file the way the format describes it: zero, zero, type code, rank, big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist(folder: Path, train_count: int = 6, test_count: int = 4, fill: int = 0) -> None:
    """Tiny Fashion-MNIST-shaped IDX files: 28x28 images whose pixels encode their index (plus ``fill``)."""
    for split, count in (("train", train_count), ("test", test_count)):
        image_stem, label_stem = FASHION_MNIST_FILES[split]
        images = ((np.arange(count)[:, None, None] * 10 + fill) * np.ones((1, 28, 28))).astype(np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(folder / f"{image_stem}.gz", images)
        write_idx(folder / f"{label_stem}.gz", labels)


def fake_fashion_download(calls: list[str]) -> Callable[[str], Path]:
    """A stand-in for torchvision's Fashion-MNIST download: records the target folder and writes a tiny copy
    (3 train, 2 test images) where torchvision would put it."""

    def download(target: str) -> Path:
        calls.append(target)
        folder = Path(target) / "FashionMNIST" / "raw"
        write_fashion_mnist(folder, train_count=3, test_count=2)
        return folder

    return download


@pytest.fixture
def no_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Fashion-MNIST anywhere: BISSL_DATA unset, a private home and the system folder at an empty place."""
    monkeypatch.delenv("BISSL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    missing = tmp_path / "system" / "fashion-mnist"
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST", str(missing))
    return missing


def test_read_idx_reads_what_the_format_says(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", images)), images)
    assert np.array_equal(read_idx(write_idx(tmp_path / "plain", images, compress=False)), images)
    wide = np.array([[1, -2], [70000, 3]], dtype=">i4")
    assert read_idx(write_idx(tmp_path / "wide.gz", wide)).tolist() == [[1, -2], [70000, 3]]


@pytest.mark.parametrize("damage", ["truncated_gzip", "bad_magic", "short_payload", "not_gzip"])
def test_damaged_idx_file_is_a_one_line_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    if damage == "truncated_gzip":
        write_idx(path, images)
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "bad_magic":
        with gzip.open(path, "wb") as handle:
            handle.write(b"\x12\x34\x08\x03" + b"\x00" * 100)
    elif damage == "short_payload":
        header = struct.pack(">BBBB3I", 0, 0, 8, 3, 10, 28, 28)
        with gzip.open(path, "wb") as handle:
            handle.write(header + bytes(28 * 28 * 9))
    else:
        path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_fashion_mnist_loads_from_bissl_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("BISSL_DATA", str(tmp_path / "env"))
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images[:, 0, 5, 5].tolist() == [0, 10, 20, 30, 40, 50]
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert (train.name, train.num_classes, train.channels, train.image_size) == ("fashion-mnist", 10, 1, 28)
    assert train.mean == datasets.FASHION_MNIST_MEAN and test.std == datasets.FASHION_MNIST_STD


def test_fashion_mnist_search_order_root_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "env" / "fashion-mnist", fill=1)
    write_fashion_mnist(tmp_path / "root" / "fashion-mnist", fill=2)
    monkeypatch.setenv("BISSL_DATA", str(tmp_path / "env"))
    assert int(load_dataset("fashion-mnist", "train", root=str(tmp_path / "root")).images[0, 0, 0, 0]) == 2
    assert int(load_dataset("fashion-mnist", "train").images[0, 0, 0, 0]) == 1
    monkeypatch.delenv("BISSL_DATA")
    assert DATASETS["fashion-mnist"].is_present(str(tmp_path / "root"))


def test_missing_fashion_mnist_names_every_place_and_the_fix(no_fashion_mnist: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert not DATASETS["fashion-mnist"].is_present(str(root))
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", "train", root=str(root))
    message = str(info.value)
    assert "\n" not in message
    assert str(root / "fashion-mnist") in message and str(no_fashion_mnist) in message
    assert "apt-get install dataset-fashion-mnist" in message and "BISSL_DATA" in message
    assert "data.download=true" in message


def test_fashion_mnist_download_goes_through_torchvision(
    no_fashion_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(datasets, "_torchvision_fashion_mnist", fake_fashion_download(calls))
    dataset = load_dataset("fashion-mnist", "test", root=str(tmp_path / "dl"), download=True)
    assert len(dataset) == 2 and calls == [str(tmp_path / "dl")]
    again = load_dataset("fashion-mnist", "train", root=str(tmp_path / "dl"))
    assert len(again) == 3


def test_failed_download_is_one_line(
    no_fashion_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(target: str) -> Path:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried every mirror")

    monkeypatch.setattr(datasets, "_torchvision_fashion_mnist", refuse)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", "train", root=str(tmp_path / "dl"), download=True)
    assert "\n" not in str(info.value) and "download" in str(info.value)


def test_mismatched_image_and_label_counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    write_fashion_mnist(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    monkeypatch.setenv("BISSL_DATA", str(tmp_path))
    with pytest.raises(DataError, match="6 images"):
        load_dataset("fashion-mnist", "train")


@pytest.mark.skipif(
    not Path(datasets.SYSTEM_FASHION_MNIST, "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BISSL_DATA", raising=False)
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    mean, std = channel_stats(train.images)
    assert mean == pytest.approx(datasets.FASHION_MNIST_MEAN, abs=1e-7)
    assert std == pytest.approx(datasets.FASHION_MNIST_STD, abs=1e-7)


def test_digits_shapes_scale_and_fixed_stratified_split() -> None:
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test", seed=123)
    assert len(train) + len(test) == 1797 and len(test) == round(1797 * 0.3)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert train.mean == test.mean and train.std == test.std
    from sklearn.datasets import load_digits

    all_counts = np.bincount(load_digits().target)
    test_counts = torch.bincount(test.labels, minlength=10).numpy()
    assert np.array_equal(torch.bincount(train.labels, minlength=10).numpy() + test_counts, all_counts)
    assert np.all(np.abs(test_counts - all_counts * 0.3) <= 1)
    again = load_dataset("digits", "test", seed=7)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_synthetic_is_deterministic_and_learnable() -> None:
    train = load_dataset("synthetic", "train")
    test = load_dataset("synthetic", "test")
    assert (len(train), len(test), train.num_classes, train.channels, train.image_size) == (
        512,
        256,
        10,
        1,
        16,
    )
    assert torch.equal(train.images, load_dataset("synthetic", "train").images)
    assert not torch.equal(train.images[:256], test.images)
    features = train.images.flatten(1).to(torch.float64)
    centroids = torch.stack([features[train.labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(test.images.flatten(1).to(torch.float64), centroids).argmin(1)
    assert (predicted == test.labels).to(torch.float64).mean() > 0.9


def test_synthetic_multilabel_and_colour() -> None:
    dataset = synthetic_dataset(64, 5, 3, 12, seed=3, multilabel=True)
    assert dataset.multilabel and dataset.labels.shape == (64, 5) and dataset.labels.dtype == torch.float32
    assert bool((dataset.labels.sum(1) >= 1).all())
    assert dataset.images.shape == (64, 3, 12, 12) and len(dataset.mean) == 3
    same_task = synthetic_dataset(64, 5, 3, 12, seed=4, multilabel=True, pattern_seed=3)
    assert not torch.equal(dataset.images, same_task.images)


def test_limit_and_image_size() -> None:
    full = load_dataset("synthetic", "train")
    small = load_dataset("synthetic", "train", limit=50, seed=1, image_size=24)
    assert small.images.shape == (50, 1, 24, 24) and small.images.dtype == torch.uint8
    assert torch.equal(small.labels, load_dataset("synthetic", "train", limit=50, seed=1).labels)
    assert not torch.equal(small.labels, load_dataset("synthetic", "train", limit=50, seed=2).labels)
    assert len(load_dataset("synthetic", "train", limit=10_000)) == len(full)
    constant = TensorDataset(
        torch.full((2, 1, 8, 8), 77, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), 1
    )
    assert bool((registry.resize_images(constant.images, 5) == 77).all())


def test_unknown_name_and_bad_split_list_the_choices() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("imagenet-22k", "train")
    assert all(name in str(info.value) for name in ("fashion-mnist", "digits", "synthetic"))
    with pytest.raises(DataError, match="train, test"):
        load_dataset("digits", "validation")
    with pytest.raises(DataError, match="limit"):
        load_dataset("digits", "train", limit=0)


def test_register_dataset_adds_a_name() -> None:
    tiny = synthetic_dataset(8, 2, 1, 4, seed=0, name="tiny")
    info = DatasetInfo(
        name="tiny-test-set",
        description="eight images",
        loader=lambda split, root, download: tiny,
        locations=lambda root: ["memory"],
        presence=lambda root: True,
    )
    register_dataset(info)
    try:
        assert "tiny-test-set" in dataset_names() and DATASETS["tiny-test-set"].where() == ["memory"]
        assert len(load_dataset("tiny-test-set", "train", limit=3)) == 3
        with pytest.raises(ValueError, match="already registered"):
            register_dataset(info)
        register_dataset(info, replace_existing=True)
    finally:
        DATASETS.pop("tiny-test-set", None)


def test_tensor_dataset_checks_and_subset() -> None:
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8)
    dataset = TensorDataset(images, torch.tensor([0, 1, 2, 0, 1, 2]), num_classes=3, name="six")
    expected_mean = images.to(torch.float64).div(255).mean(dim=(0, 2, 3))
    assert dataset.mean == pytest.approx(expected_mean.tolist())
    part = dataset.subset([4, 1])
    assert part.labels.tolist() == [1, 1] and torch.equal(part.images[0], images[4])
    assert (part.name, part.mean, part.num_classes) == ("six", dataset.mean, 3)
    masked = dataset.subset(dataset.labels == 2)
    assert len(masked) == 2 and torch.equal(masked.images[1], images[5])
    with pytest.raises(DataError, match="uint8"):
        TensorDataset(images.float(), torch.zeros(6, dtype=torch.int64), num_classes=1)
    with pytest.raises(DataError, match="labels"):
        TensorDataset(images, torch.zeros(5, dtype=torch.int64), num_classes=1)
    with pytest.raises(DataError, match=r"0\.\.2"):
        TensorDataset(images, torch.full((6,), 3), num_classes=3)
