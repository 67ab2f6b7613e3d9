"""The embedded datasets, held whole in memory: Fashion-MNIST, scikit-learn's digits and synthetic images.

They register into :mod:`bissl.data.registry` on import; augmentation then runs batched on the training device.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bissl.data.registry import (
    DatasetInfo,
    TensorDataset,
    channel_stats,
    data_roots,
    default_download_root,
    register_dataset,
)
from bissl.data.splits import train_val_split
from bissl.errors import DataError

SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# Under a data root: a plain copy of the IDX files, or the folder torchvision's download leaves.
FASHION_MNIST_FOLDERS = ("fashion-mnist", "FashionMNIST/raw")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Per-channel statistics of the 60,000 Fashion-MNIST training images, in [0, 1] units (checked in the tests).
FASHION_MNIST_MEAN = (0.28604060,)
FASHION_MNIST_STD = (0.35302424,)
# The digits split is fixed for every run: moving with the run seed, test numbers would not compare.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.3
# Synthetic data: one fixed set of class patterns; train and test draw different samples from it.
SYNTHETIC_PATTERN_SEED = 0
SYNTHETIC_SAMPLE_SEEDS = {"train": 1, "test": 2}
SYNTHETIC_DEFAULT_SIZES = {"train": 512, "test": 256}
SYNTHETIC_DEFAULT_CLASSES = 10
SYNTHETIC_DEFAULT_CHANNELS = 1
SYNTHETIC_DEFAULT_IMAGE_SIZE = 16

# IDX type codes: numpy dtype (big-endian where it matters) of the payload.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# ---------------------------------------------------------------------------------------------------------
# IDX files (the MNIST family's format)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed when named ``*.gz``); any damage raises DataError naming it."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"cannot read {path}: {error}; the file is damaged, delete it and fetch it again"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it and fetch it again")
    dtype = IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header cut short); delete it and fetch it again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header {shape} needs {expected}; "
            "the file is truncated or damaged, delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in ``folder``, gzip-compressed or plain, or None."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def read_idx_pair(folder: Path, image_stem: str, label_stem: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an images/labels pair of IDX files and check they agree: images (N, H, W), labels (N,)."""
    image_path = _find_idx(folder, image_stem)
    label_path = _find_idx(folder, label_stem)
    if image_path is None or label_path is None:
        raise DataError(f"{folder} lacks {image_stem}.gz or {label_stem}.gz")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{image_path} should hold uint8 images (N, H, W), found {images.dtype} {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(f"{label_path} should hold labels (N,), found shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{image_path} holds {images.shape[0]} images but {label_path} {labels.shape[0]} labels"
        )
    return images, labels


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST


def fashion_mnist_locations(root: str | None) -> list[str]:
    """Folders searched for the Fashion-MNIST IDX files, in order: ``fashion-mnist/`` and torchvision's
    ``FashionMNIST/raw/`` under each data root (:func:`~bissl.data.registry.data_roots`), then the system copy."""
    places = [str(base / sub) for base in data_roots(root) for sub in FASHION_MNIST_FOLDERS]
    return [*places, SYSTEM_FASHION_MNIST]


def _fashion_mnist_folder(root: str | None) -> Path | None:
    """The first searched folder that holds all four Fashion-MNIST files."""
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    for place in fashion_mnist_locations(root):
        folder = Path(place)
        if all(_find_idx(folder, stem) is not None for stem in stems):
            return folder
    return None


def _torchvision_fashion_mnist(target: str) -> Path:
    """Download both Fashion-MNIST splits with torchvision into ``target``; returns the folder of the IDX files."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(target, train=train, download=True)
    return Path(target) / "FashionMNIST" / "raw"


def _download_fashion_mnist(root: str | None) -> Path:
    """Fetch Fashion-MNIST into the download root; any failure becomes a one-line DataError."""
    target = default_download_root(root)
    try:
        return _torchvision_fashion_mnist(target)
    except Exception as error:  # any failure is reported as one line
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"download of fashion-mnist into {target} failed ({message}); "
            "apt-get install dataset-fashion-mnist or set BISSL_DATA to a folder holding fashion-mnist/"
        ) from None


def load_fashion_mnist(split: str, root: str | None, download: bool) -> TensorDataset:
    """Fashion-MNIST (10 classes, 28x28 grey) read straight from its IDX files."""
    folder = _fashion_mnist_folder(root)
    if folder is None:
        if not download:
            raise DataError(
                "fashion-mnist not found in " + ", ".join(fashion_mnist_locations(root)) + "; "
                "apt-get install dataset-fashion-mnist, set BISSL_DATA, or pass data.download=true"
            )
        folder = _download_fashion_mnist(root)
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    images, labels = read_idx_pair(folder, image_stem, label_stem)
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{folder / label_stem} holds labels above 9; the file is damaged")
    return TensorDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=10,
        name="fashion-mnist",
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
    )


# ---------------------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits_dataset(split: str, root: str | None, download: bool) -> TensorDataset:
    """scikit-learn's 1,797 8x8 digits, scaled to uint8, with a fixed stratified 70/30 train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)
    images = torch.from_numpy(np.rint(values * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    train_idx, test_idx = train_val_split(
        len(labels), DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED, stratify_labels=labels
    )
    mean, std = channel_stats(images[train_idx])
    chosen = train_idx if split == "train" else test_idx
    return TensorDataset(
        images=images[chosen], labels=labels[chosen], num_classes=10, name="digits", mean=mean, std=std
    )


# ---------------------------------------------------------------------------------------------------------
# Synthetic


def synthetic_dataset(
    num_samples: int,
    num_classes: int,
    channels: int,
    image_size: int,
    seed: int,
    multilabel: bool = False,
    *,
    pattern_seed: int | None = None,
    noise: float = 0.15,
    name: str = "synthetic",
) -> TensorDataset:
    """Deterministic images a classifier can learn: a smooth mean pattern per class, plus noise per sample.

    Patterns come from ``pattern_seed`` (default ``seed``), samples from ``seed``, so two calls with the
    same ``pattern_seed`` and different ``seed`` are a train and a test set of one task. Single-label classes
    are balanced; multi-label samples carry each class with probability 0.3 (at least one) and show the mean
    of their classes' patterns.
    """
    if num_samples < 0 or num_classes < 1 or channels < 1 or image_size < 1:
        raise DataError(
            "synthetic data needs num_samples >= 0 and positive num_classes, channels and image_size"
        )
    pattern_generator = torch.Generator().manual_seed(seed if pattern_seed is None else pattern_seed)
    coarse = max(2, image_size // 4)
    low_res = torch.rand((num_classes, channels, coarse, coarse), generator=pattern_generator)
    patterns = F.interpolate(low_res, size=(image_size, image_size), mode="bilinear", align_corners=False)
    patterns = 0.15 + 0.7 * patterns
    generator = torch.Generator().manual_seed(seed)
    labels: torch.Tensor
    if multilabel:
        labels = (torch.rand((num_samples, num_classes), generator=generator) < 0.3).to(torch.float32)
        empty = labels.sum(dim=1) == 0
        forced = torch.randint(num_classes, (num_samples,), generator=generator)
        labels[empty, forced[empty]] = 1.0
        weights = labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)
        means = torch.einsum("nk,kchw->nchw", weights, patterns)
    else:
        order = torch.randperm(num_samples, generator=generator)
        labels = (torch.arange(num_samples) % num_classes)[order]
        means = patterns[labels]
    noisy = means + noise * torch.randn(means.shape, generator=generator)
    images = (noisy.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return TensorDataset(
        images=images, labels=labels, num_classes=num_classes, multilabel=multilabel, name=name
    )


def load_synthetic(split: str, root: str | None, download: bool) -> TensorDataset:
    """The default small synthetic task: 512 train / 256 test, 10 classes, 1 channel, 16 px."""
    train = synthetic_dataset(
        SYNTHETIC_DEFAULT_SIZES["train"],
        SYNTHETIC_DEFAULT_CLASSES,
        SYNTHETIC_DEFAULT_CHANNELS,
        SYNTHETIC_DEFAULT_IMAGE_SIZE,
        SYNTHETIC_SAMPLE_SEEDS["train"],
        pattern_seed=SYNTHETIC_PATTERN_SEED,
    )
    if split == "train":
        return train
    test = synthetic_dataset(
        SYNTHETIC_DEFAULT_SIZES[split],
        SYNTHETIC_DEFAULT_CLASSES,
        SYNTHETIC_DEFAULT_CHANNELS,
        SYNTHETIC_DEFAULT_IMAGE_SIZE,
        SYNTHETIC_SAMPLE_SEEDS[split],
        pattern_seed=SYNTHETIC_PATTERN_SEED,
    )
    return replace(test, mean=train.mean, std=train.std)


def _always(root: str | None) -> bool:
    return True


register_dataset(
    DatasetInfo(
        name="fashion-mnist",
        description="Fashion-MNIST: 60,000 train / 10,000 test 28x28 grey images of clothing, 10 classes",
        loader=load_fashion_mnist,
        locations=fashion_mnist_locations,
        presence=lambda root: _fashion_mnist_folder(root) is not None,
    )
)
register_dataset(
    DatasetInfo(
        name="digits",
        description="scikit-learn digits: 1,797 8x8 grey handwritten digits, 10 classes, fixed 70/30 split",
        loader=load_digits_dataset,
        locations=lambda root: ["bundled with scikit-learn"],
        presence=_always,
    )
)
register_dataset(
    DatasetInfo(
        name="synthetic",
        description="synthetic class patterns plus noise: 512 train / 256 test 16x16 grey images, 10 classes",
        loader=load_synthetic,
        locations=lambda root: ["generated in memory"],
        presence=_always,
    )
)
