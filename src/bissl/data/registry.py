"""The dataset registry: the in-memory dataset type, dataset entries by name, and loading a split by name.

Every set (the embedded ones in :mod:`bissl.data.embedded`, the torchvision layouts and image folders in
:mod:`bissl.data.torchvision_sets`) registers into :data:`DATASETS` here; the package ``bissl.data`` imports
both, so every name is registered before a lookup.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bissl.errors import DataError

SPLITS = ("train", "test")
DATA_ENV_VAR = "BISSL_DATA"

# ITU-R 601 luma weights (PIL's convert("L")): colour images and their statistics become grey with them.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class TensorDataset:
    """Images (N, C, H, W) uint8 and labels, (N,) int64 or (N, K) float32 multi-hot, kept in memory.

    ``mean`` and ``std`` are per-channel normalisation statistics in [0, 1] units; left empty, they are
    computed from ``images``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    multilabel: bool = False
    name: str = "dataset"
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"dataset {self.name!r}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        count = self.images.shape[0]
        if self.labels.shape[0] != count:
            raise DataError(f"dataset {self.name!r}: {count} images but {self.labels.shape[0]} labels")
        if self.multilabel:
            if self.labels.dim() != 2 or self.labels.shape[1] != self.num_classes:
                raise DataError(
                    f"dataset {self.name!r}: multi-label labels must be (N, {self.num_classes}) float32, "
                    f"got shape {tuple(self.labels.shape)}"
                )
            self.labels = self.labels.to(torch.float32)
        else:
            if self.labels.dim() != 1 or self.labels.is_floating_point():
                raise DataError(
                    f"dataset {self.name!r}: labels must be (N,) integers, got {self.labels.dtype} "
                    f"of shape {tuple(self.labels.shape)}"
                )
            self.labels = self.labels.to(torch.int64)
            if count and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
                raise DataError(
                    f"dataset {self.name!r}: labels must lie in 0..{self.num_classes - 1}, "
                    f"got {int(self.labels.min())}..{int(self.labels.max())}"
                )
        if not self.mean or not self.std:
            self.mean, self.std = channel_stats(self.images)
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(
                f"dataset {self.name!r}: mean and std need {self.channels} values each, "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        """Number of image channels (1 for grey, 3 for colour)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side of the (square) images; the shorter side when they are not square."""
        return int(min(self.images.shape[2], self.images.shape[3]))

    def subset(self, indices: torch.Tensor | Sequence[int]) -> TensorDataset:
        """The samples at ``indices`` (positions or a boolean mask), with the same name, classes and statistics."""
        index = torch.as_tensor(indices)
        index = index.nonzero().flatten() if index.dtype == torch.bool else index.to(torch.int64)
        return replace(self, images=self.images[index], labels=self.labels[index])


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images in [0, 1] units, exact from 256-bin histograms."""
    channels = int(images.shape[1])
    if images.shape[0] == 0:
        return (0.5,) * channels, (0.5,) * channels
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means: list[float] = []
    stds: list[float] = []
    for channel in range(channels):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        weights = counts / counts.sum()
        mean = float((weights * levels).sum())
        variance = float((weights * (levels - mean) ** 2).sum())
        means.append(mean)
        stds.append(max(variance**0.5, 1e-3))
    return tuple(means), tuple(stds)


def resize_images(images: torch.Tensor, image_size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 images to ``image_size`` square (bilinear, antialiased), keeping uint8; chunked."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float32)
        resized = F.interpolate(
            block, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def grey_stats(values: tuple[float, ...]) -> tuple[float, ...]:
    """Per-channel colour statistics (mean or std) as one grey channel, weighted as luma is."""
    if len(values) == 1:
        return values
    return (sum(w * v for w, v in zip(LUMA_WEIGHTS, values, strict=True)),)


def convert_channels(dataset: TensorDataset, channels: int) -> TensorDataset:
    """The dataset with ``channels`` image channels: grey repeated to RGB, or RGB to grey by luma (as PIL does);
    the normalisation statistics follow (repeated, or luma-weighted)."""
    have = dataset.channels
    if have == channels:
        return dataset
    if have == 1 and channels == 3:
        return replace(
            dataset,
            images=dataset.images.expand(-1, 3, -1, -1).contiguous(),
            mean=dataset.mean * 3,
            std=dataset.std * 3,
        )
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1)
        grey = (dataset.images.to(torch.float32) * weights).sum(dim=1, keepdim=True)
        return replace(
            dataset,
            images=grey.round_().clamp_(0, 255).to(torch.uint8),
            mean=grey_stats(dataset.mean),
            std=grey_stats(dataset.std),
        )
    raise DataError(f"dataset {dataset.name!r} has {have} channels; it cannot be converted to {channels}")


# ---------------------------------------------------------------------------------------------------------
# Registry

Loader = Callable[[str, str | None, bool], TensorDataset]
SizedLoader = Callable[[str, str | None, bool, int], TensorDataset]


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset: what it is, where it is looked for, whether it is there, and how to load a split.

    ``loader(split, root, download)`` returns the split at native size; :func:`load_dataset` resizes and
    subsamples. Photo sets of many image sizes give ``sized_loader(split, root, download, image_size)``, used
    whenever an image size is asked for. ``splits`` lists the splits the dataset has.
    """

    name: str
    description: str
    loader: Loader
    locations: Callable[[str | None], list[str]]
    presence: Callable[[str | None], bool]
    splits: tuple[str, ...] = SPLITS
    sized_loader: SizedLoader | None = None

    def where(self, root: str | None = None) -> list[str]:
        """Every place this dataset is looked for, in order."""
        return self.locations(root)

    def is_present(self, root: str | None = None) -> bool:
        """True when the dataset can be loaded without a download."""
        return self.presence(root)


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo, *, replace_existing: bool = False) -> DatasetInfo:
    """Add a dataset to the registry under ``info.name``; a name already taken needs ``replace_existing``."""
    if info.name in DATASETS and not replace_existing:
        raise ValueError(f"dataset {info.name!r} is already registered")
    DATASETS[info.name] = info
    return info


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


def load_dataset(
    name: str,
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> TensorDataset:
    """Load split ``train`` or ``test`` of a registered dataset into memory as uint8 tensors.

    ``limit`` keeps a random subset of that many samples (drawn with ``seed``, kept in dataset order);
    ``image_size`` resizes once on load (bilinear, antialiased) when it differs from the native size;
    ``channels`` (1 or 3) converts the images (see :func:`convert_channels`), None keeps the dataset's own.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    info = DATASETS[name]
    if split not in info.splits:
        raise DataError(f"dataset split {split!r} is not one of {', '.join(info.splits)}")
    if limit is not None and limit < 1:
        raise DataError(f"data limit must be a positive number of samples, got {limit}")
    if image_size is not None and image_size < 1:
        raise DataError(f"data image_size must be positive, got {image_size}")
    if image_size is not None and info.sized_loader is not None:
        dataset = info.sized_loader(split, root, download, image_size)
    else:
        dataset = info.loader(split, root, download)
    if limit is not None and limit < len(dataset):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(dataset), generator=generator)[:limit].sort().values
        dataset = dataset.subset(keep)
    if image_size is not None:
        dataset = replace(dataset, images=resize_images(dataset.images, image_size))
    if channels is not None:
        dataset = convert_channels(dataset, channels)
    return dataset


# ---------------------------------------------------------------------------------------------------------
# Where datasets are looked for and where downloads go

HOME_DATA_ROOT = "~/.cache/bissl"


def data_roots(root: str | None) -> list[Path]:
    """The data roots every dataset is looked for under, in this order: ``root`` (data.root), then
    $BISSL_DATA, then ~/.cache/bissl (those that are set, ``~`` expanded, each once). A download goes into the
    first of them (:func:`default_download_root`), so a downloaded copy is found by the next run."""
    places = [root, os.environ.get(DATA_ENV_VAR), HOME_DATA_ROOT]
    roots: list[Path] = []
    for place in places:
        if place and Path(place).expanduser() not in roots:
            roots.append(Path(place).expanduser())
    return roots


def default_download_root(root: str | None) -> str:
    """Where a download goes: the first data root (``root``, else $BISSL_DATA, else ~/.cache/bissl)."""
    return str(data_roots(root)[0])


def describe_search_order(root: str | None) -> str:
    """One line naming the data roots in search order and where a download goes."""
    named = [("data.root", root), (f"${DATA_ENV_VAR}", os.environ.get(DATA_ENV_VAR)), (HOME_DATA_ROOT, None)]
    shown = [f"{label} ({Path(value).expanduser()})" if value else label for label, value in named]
    unset = [label for label, value in named[:2] if not value]
    note = f"; {' and '.join(unset)} not set" if unset else ""
    return (
        f"datasets are looked for under {', then '.join(shown)}{note}; "
        f"data.download=true downloads into {default_download_root(root)}"
    )


def describe_datasets(root: str | None) -> str:
    """What ``bissl data list`` prints: the search order (:func:`describe_search_order`), then one line per
    registered dataset (name, present or missing, description) followed by every place it is looked for."""
    lines = [describe_search_order(root)]
    for name in sorted(DATASETS):
        info = DATASETS[name]
        state = "present" if info.is_present(root) else "missing"
        lines.append(f"{name:<16} {state:<8} {info.description}")
        lines.extend(f"{'':<25} looks in: {place}" for place in info.where(root))
    return "\n".join(lines)
