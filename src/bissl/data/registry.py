"""The dataset registry: the in-memory dataset type, dataset entries by name, and loading a split by name.

Every set (the embedded ones in :mod:`bissl.data.embedded`, the torchvision layouts and image folders in
:mod:`bissl.data.torchvision_sets`) registers into :data:`DATASETS` here; the package ``bissl.data`` imports
both, so every name is registered before a lookup. Names of a pattern (``folder:PATH``) are registered on
first lookup (:func:`dataset_info`). Code outside ``bissl.data`` looks datasets up here only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

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
class ImageList:
    """The files of one split and their labels: (N,) int64, or (N, K) float32 multi-hot."""

    files: list[str]
    labels: torch.Tensor
    num_classes: int
    multilabel: bool = False


Lister = Callable[[Path, str], ImageList]
Reader = Callable[[Path, str], TensorDataset]
Downloader = Callable[[str], None]
InMemory = bool | Literal["auto"]
# Bound per photo set by the module that defines it (the first three arguments: split, root, download); a
# disk loader returns a bissl.data.folder_stream.DiskDataset.
FileLister = Callable[[str, str | None, bool], ImageList]
DiskLoader = Callable[[str, str | None, bool, int | None, int, int | None], Any]
DiskChoice = Callable[[int, InMemory, str | None, bool], bool]


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset: what it is, where it is looked for, whether it is there, and how to load a split.

    ``loader(split, root, download)`` returns the split at native size; :func:`load_dataset` resizes and
    subsamples. Photo sets of many image sizes give ``sized_loader(split, root, download, image_size)``, used
    whenever an image size is asked for. ``splits`` lists the splits the dataset has; a ``val`` among them is
    the dataset's own validation split (:attr:`official_val`).

    A set stored as files (:mod:`bissl.data.torchvision_sets`) also says where it lives and how it is read:
    ``folder`` under each data root, complete when it holds ``marker`` (an image folder's own path is
    ``fixed_root``, the one place searched); ``lister(folder, split)`` lists a photo set's files and labels,
    ``reader(folder, split)`` reads a set stored as arrays; ``download(target)`` fetches it when it can be,
    ``hint`` says how to get it otherwise; with ``detect_grey`` it loads as grey when every image is.
    A photo set binds ``list_files(split, root, download)`` (its folder found, or downloaded when allowed,
    then listed), ``disk_loader(split, root, download, limit, seed, channels)`` (the split as files read per
    batch) and ``disk_choice(image_size, in_memory, root, download)`` (whether its train split is read from
    disk); :func:`list_images`, :func:`disk_dataset` and :func:`reads_from_disk` reach them by name.
    """

    name: str
    description: str
    loader: Loader
    locations: Callable[[str | None], list[str]]
    presence: Callable[[str | None], bool]
    splits: tuple[str, ...] = SPLITS
    sized_loader: SizedLoader | None = None
    folder: str = ""
    marker: str = ""
    fixed_root: str | None = None
    lister: Lister | None = None
    reader: Reader | None = None
    download: Downloader | None = None
    hint: str = ""
    detect_grey: bool = False
    list_files: FileLister | None = None
    disk_loader: DiskLoader | None = None
    disk_choice: DiskChoice | None = None

    def where(self, root: str | None = None) -> list[str]:
        """Every place this dataset is looked for, in order."""
        return self.locations(root)

    def is_present(self, root: str | None = None) -> bool:
        """True when the dataset can be loaded without a download."""
        return self.presence(root)

    @property
    def official_val(self) -> bool:
        """Whether the dataset ships its own validation split (then no seeded split is drawn)."""
        return "val" in self.splits

    @property
    def photos(self) -> bool:
        """Whether the dataset is image files (decoded per image) rather than arrays or generated."""
        return self.lister is not None

    @property
    def on_disk(self) -> bool:
        """Whether the dataset is read from files under a data root (or its own folder)."""
        return self.lister is not None or self.reader is not None


DATASETS: dict[str, DatasetInfo] = {}
# Name patterns: a prefix and what makes the entry of a name that starts with it (folder:PATH).
NAME_PATTERNS: dict[str, Callable[[str], DatasetInfo]] = {}


def register_dataset(info: DatasetInfo, *, replace_existing: bool = False) -> DatasetInfo:
    """Add a dataset to the registry under ``info.name``; a name already taken needs ``replace_existing``."""
    if info.name in DATASETS and not replace_existing:
        raise ValueError(f"dataset {info.name!r} is already registered")
    DATASETS[info.name] = info
    return info


def register_name_pattern(prefix: str, make: Callable[[str], DatasetInfo]) -> None:
    """Let every name that starts with ``prefix`` be registered on its first lookup, as ``make(name)``."""
    NAME_PATTERNS[prefix] = make


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The entry of ``name``. A name of a registered pattern (``folder:PATH``) is registered on first use, so it
    resolves as any other name; an unknown name stops with the list of known ones."""
    if name in DATASETS:
        return DATASETS[name]
    for prefix, make in NAME_PATTERNS.items():
        if name.startswith(prefix):
            return register_dataset(make(name))
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")


def has_official_val(name: str) -> bool:
    """Whether the dataset ships its own validation split (then no seeded split is drawn)."""
    return dataset_info(name).official_val


def is_photo_set(name: str) -> bool:
    """Whether the dataset is image files (decoded per image) rather than arrays."""
    return dataset_info(name).photos


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
    info = dataset_info(name)
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
# Photo sets: their files, and reading them from disk


def _photo_set(name: str) -> DatasetInfo:
    info = dataset_info(name)
    if not info.on_disk:
        raise DataError(f"dataset {name!r} is not read from files")
    if not info.photos:
        raise DataError(f"dataset {name!r} is stored as arrays, not image files")
    return info


def list_images(name: str, split: str, root: str | None = None, download: bool = False) -> ImageList:
    """The files and labels of ``split`` of a photo set (its folders are listed once per run, see
    :func:`keep_listings`)."""
    list_files = _photo_set(name).list_files
    if list_files is None:
        raise DataError(f"dataset {name!r} does not list its files")
    return list_files(split, root, download)


def disk_dataset(
    name: str,
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    limit: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> Any:
    """A photo set's split as files read when needed (a :class:`bissl.data.folder_stream.DiskDataset`);
    ``limit`` keeps a seeded random subset (in order); ``channels`` None decodes to the set's own."""
    disk_loader = _photo_set(name).disk_loader
    if disk_loader is None:
        raise DataError(f"dataset {name!r} is not read from disk batch by batch")
    return disk_loader(split, root, download, limit, seed, channels)


def reads_from_disk(
    name: str, image_size: int, in_memory: InMemory, root: str | None, download: bool
) -> bool:
    """Whether the train split of ``name`` is read per batch from disk rather than decoded into memory: never
    for a set that is not image files; else as ``in_memory`` says (by size for "auto")."""
    disk_choice = dataset_info(name).disk_choice
    return disk_choice is not None and disk_choice(image_size, in_memory, root, download)


# ---------------------------------------------------------------------------------------------------------
# Listing a folder once per run

T = TypeVar("T")


class _Listings:
    """The folder listings kept while a run goes on: None outside :func:`keep_listings`."""

    kept: dict[Hashable, Any] | None = None


_LISTINGS = _Listings()


@contextmanager
def keep_listings() -> Iterator[None]:
    """Within this block (one run) every folder a dataset reads is listed once and the listing reused, so the
    check of a set, the loading of each split and the detection of its channels see the same files. Blocks
    nest (the outermost one keeps the listings) and serve as a function decorator too; outside any block every
    lookup lists afresh, so a folder changed between two runs of one process is seen as it is."""
    if _LISTINGS.kept is not None:
        yield
        return
    _LISTINGS.kept = {}
    try:
        yield
    finally:
        _LISTINGS.kept = None


def keeps_listings() -> bool:
    """Whether a :func:`keep_listings` block is open."""
    return _LISTINGS.kept is not None


def kept_listing(key: Hashable, make: Callable[[], T]) -> T:
    """``make()``; inside a :func:`keep_listings` block, made once per ``key`` and reused."""
    kept = _LISTINGS.kept
    if kept is None:
        return make()
    if key not in kept:
        kept[key] = make()
    value: T = kept[key]
    return value


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
