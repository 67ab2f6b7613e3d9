"""Paper-scale datasets by name: STL10, ImageNet, CIFAR-10/100, Flowers102, DTD, Oxford-IIIT Pets, Food-101,
FGVC-Aircraft, Stanford Cars, Caltech-101, SUN397, VOC2007 (multi-label), CUB-200-2011 and any image folder.

Each set is an entry of the registry (:mod:`bissl.data.registry`) that says where it lives under a data root
(:mod:`bissl.data.locations`) and which reader reads its layout (:mod:`bissl.data.layout_readers`: the files
torchvision's download, or the official archive, leaves on disk, read without checksum checks, so any complete
copy works). Photo sets are decoded once at the run's image size (shorter side resized, centre square kept)
into uint8 tensors cached next to the data (:mod:`bissl.data.decode_cache`); a pretext set too large for
memory is read batch by batch from disk instead (``folder_stream``). Splits are the official ones where a
dataset has them, else fixed seeded per-class draws (docs/paper-scale.md). Every set is normalised with the
ImageNet mean and std, as the reference does (their luma-weighted grey values for one channel). Image folders
(``folder:PATH``) are registered on first lookup; those whose images are all single-channel load as grey.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from bissl.data import layout_readers
from bissl.data.decode_cache import cached_images
from bissl.data.embedded import synthetic_dataset
from bissl.data.folder_stream import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DiskDataset,
    decode_all,
    image_channels,
)
from bissl.data.layout_readers import VOC_CLASSES
from bissl.data.locations import dataset_folder, find_folder, folder_path, locations, torchvision_download
from bissl.data.registry import (
    DatasetInfo,
    Downloader,
    ImageList,
    InMemory,
    Lister,
    Reader,
    TensorDataset,
    dataset_info,
    grey_stats,
    has_official_val,
    is_photo_set,
    register_dataset,
    register_name_pattern,
)
from bissl.errors import DataError

__all__ = [
    "CALTECH101_TRAIN_PER_CLASS",
    "FIXED_SPLIT_SEED",
    "FOLDER_PREFIX",
    "MEMORY_LIMIT_BYTES",
    "SUN397_PER_CLASS",
    "VOC_CLASSES",
    "disk_dataset",
    "ensure_registered",
    "file_set",
    "folder_path",
    "has_official_val",
    "is_photo_set",
    "list_images",
    "load_photos",
    "photo_channels",
    "reads_from_disk",
]

# Photo sets whose decoded pretext split would exceed this stay on disk when data.in_memory is "auto".
MEMORY_LIMIT_BYTES = 8 * 2**30
# Seed of the per-class draws of sets without an official split: fixed, so test numbers always compare.
FIXED_SPLIT_SEED = 0
CALTECH101_TRAIN_PER_CLASS = 30
SUN397_PER_CLASS = 50
DECODE_WORKERS_FROM = 2048
FOLDER_PREFIX = "folder:"
SYNTHETIC_RGB_SIZES = {"train": 256, "test": 64}


# ---------------------------------------------------------------------------------------------------------
# Listing, decoding and reading the sets stored as files


def _stored_set(name: str) -> DatasetInfo:
    """The registry entry of a set read from files (``folder:PATH`` names are registered on first use)."""
    info = dataset_info(name)
    if not info.on_disk:
        raise DataError(f"dataset {name!r} is not read from files")
    return info


def list_images(name: str, split: str, root: str | None = None, download: bool = False) -> ImageList:
    """The files and labels of ``split`` of a photo set (its folders are listed once per run)."""
    info = _stored_set(name)
    if info.lister is None:
        raise DataError(f"dataset {name!r} is stored as arrays, not image files")
    if split not in info.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; its splits: {', '.join(info.splits)}")
    return info.lister(dataset_folder(info, root, download), split)


_DETECTED_CHANNELS: dict[tuple[str, str], int] = {}


def photo_channels(name: str, root: str | None = None, download: bool = False) -> int:
    """Channels a photo set decodes to: 3, or 1 for a ``detect_grey`` set (image folders) whose images are all
    single-channel in every split. Found once per folder and process (only headers are read)."""
    info = _stored_set(name)
    if not info.detect_grey:
        return 3
    folder = dataset_folder(info, root, download)
    key = (name, str(folder.resolve()))
    if key not in _DETECTED_CHANNELS:
        files = [f for split in info.splits for f in _split_files(name, split, root, download)]
        _DETECTED_CHANNELS[key] = image_channels(files)
    return _DETECTED_CHANNELS[key]


def _split_files(name: str, split: str, root: str | None, download: bool) -> list[str]:
    """The files of a split, or none when the dataset lacks that split's folder."""
    try:
        return list_images(name, split, root, download).files
    except DataError:
        if split == "train":
            raise
        return []


def _decode(name: str, listing: ImageList, image_size: int, channels: int) -> torch.Tensor:
    """Every image of ``listing`` decoded at ``image_size`` (loader workers for large sets)."""
    source = DiskDataset(
        listing.files, listing.labels, listing.num_classes, listing.multilabel, name=name, channels=channels
    )
    workers = min(8, os.cpu_count() or 1) if len(source) >= DECODE_WORKERS_FROM else 0
    return decode_all(source, image_size, num_workers=workers)


def load_photos(name: str, split: str, root: str | None, download: bool, image_size: int) -> TensorDataset:
    """A photo set's split decoded at ``image_size`` into memory (cached for the next run)."""
    folder = dataset_folder(_stored_set(name), root, download)
    listing = list_images(name, split, root, download)
    channels = photo_channels(name, root, download)
    images = cached_images(
        name,
        folder,
        split,
        listing,
        image_size,
        channels,
        partial(_decode, name, listing, image_size, channels),
    )
    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD)
        if channels == 3
        else (grey_stats(IMAGENET_MEAN), grey_stats(IMAGENET_STD))
    )
    return TensorDataset(
        images=images,
        labels=listing.labels,
        num_classes=listing.num_classes,
        multilabel=listing.multilabel,
        name=name,
        mean=mean,
        std=std,
    )


def _native_photos(name: str, split: str, root: str | None, download: bool) -> TensorDataset:
    raise DataError(
        f"dataset {name!r} holds photos of many sizes; load it with an image size (data.image_size)"
    )


def _read_arrays(name: str, split: str, root: str | None, download: bool) -> TensorDataset:
    info = _stored_set(name)
    if info.reader is None:
        raise DataError(f"dataset {name!r} is not stored as arrays")
    if split not in info.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; its splits: {', '.join(info.splits)}")
    return info.reader(dataset_folder(info, root, download), split)


def reads_from_disk(
    name: str, image_size: int, in_memory: InMemory, root: str | None, download: bool
) -> bool:
    """Whether the train split of ``name`` is read per batch from disk rather than decoded into memory:
    never for array sets, always with ``in_memory=False``, and by size (``MEMORY_LIMIT_BYTES``) for "auto"."""
    if not is_photo_set(name) or in_memory is True:
        return False
    if in_memory is False:
        return True
    count = len(list_images(name, "train", root, download).files)
    return count * 3 * image_size * image_size > MEMORY_LIMIT_BYTES


def disk_dataset(
    name: str,
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    limit: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> DiskDataset:
    """A photo set's split as files read when needed; ``limit`` keeps a seeded random subset (in order).
    Images decode with ``channels`` channels (None: the set's own, see :func:`photo_channels`)."""
    listing = list_images(name, split, root, download)
    channels = channels if channels is not None else photo_channels(name, root, download)
    dataset = DiskDataset(
        listing.files, listing.labels, listing.num_classes, listing.multilabel, name=name, channels=channels
    )
    if limit is not None and limit < len(dataset):
        generator = torch.Generator().manual_seed(seed)
        dataset = dataset.subset(torch.randperm(len(dataset), generator=generator)[:limit].sort().values)
    return dataset


def _disk_loader(
    name: str,
    split: str,
    root: str | None,
    download: bool,
    limit: int | None,
    seed: int,
    channels: int | None,
) -> DiskDataset:
    return disk_dataset(name, split, root=root, download=download, limit=limit, seed=seed, channels=channels)


# ---------------------------------------------------------------------------------------------------------
# Registry entries


def _where(name: str, root: str | None) -> list[str]:
    return [str(place) for place in locations(dataset_info(name), root)]


def _present(name: str, root: str | None) -> bool:
    return find_folder(dataset_info(name), root) is not None


def file_set(
    name: str,
    description: str,
    folder: str,
    marker: str,
    *,
    splits: tuple[str, ...] = ("train", "test"),
    lister: Lister | None = None,
    reader: Reader | None = None,
    download: Downloader | None = None,
    hint: str = "",
    fixed_root: str | None = None,
    detect_grey: bool = False,
) -> DatasetInfo:
    """The registry entry of a set stored as files: ``folder`` under each data root (or ``fixed_root``) holding
    ``marker``; ``lister`` for photo sets (files and labels, decoded at the run's image size), ``reader`` for
    sets stored as arrays (uint8 images at their native size). Its loaders look the entry up by name, so a
    replaced entry is the one read."""
    photos = lister is not None
    return DatasetInfo(
        name=name,
        description=description,
        loader=partial(_native_photos, name) if photos else partial(_read_arrays, name),
        locations=partial(_where, name),
        presence=partial(_present, name),
        splits=splits,
        sized_loader=partial(load_photos, name) if photos else None,
        folder=folder,
        marker=marker,
        fixed_root=fixed_root,
        lister=lister,
        reader=reader,
        download=download,
        hint=hint,
        detect_grey=detect_grey,
        list_files=partial(list_images, name) if photos else None,
        disk_loader=partial(_disk_loader, name) if photos else None,
        disk_choice=partial(reads_from_disk, name) if photos else None,
    )


def _image_folder(name: str) -> DatasetInfo:
    """The entry of ``folder:PATH``: PATH/train/<class>/*, and PATH/test or PATH/val; grey when all images are."""
    path = name[len(FOLDER_PREFIX) :]
    if not path:
        raise DataError("dataset name 'folder:' needs a path, e.g. folder:/data/my-images")
    path = folder_path(path)
    return file_set(
        name,
        f"image folder {path}: train/<class>/*, test/<class>/* (or val/); grey when all images are",
        ".",
        "train",
        lister=layout_readers.class_tree("train", ("test", "val")),
        fixed_root=path,
        detect_grey=True,
    )


def ensure_registered(name: str) -> None:
    """Register ``folder:PATH`` on first use (any registry lookup of the name does it too)."""
    if name.startswith(FOLDER_PREFIX):
        dataset_info(name)


def _folder_placeholder(split: str, root: str | None, download: bool) -> TensorDataset:
    raise DataError(
        "dataset name folder:PATH is a pattern: replace PATH by the folder, e.g. folder:/data/pets"
    )


def _synthetic_rgb(split: str, root: str | None, download: bool) -> TensorDataset:
    """256 train / 64 test 32x32 colour images of 10 classes: a stand-in for the paper's colour sets."""
    train = synthetic_dataset(
        SYNTHETIC_RGB_SIZES["train"], 10, 3, 32, 1, pattern_seed=0, name="synthetic-rgb"
    )
    if split == "train":
        return train
    test = synthetic_dataset(SYNTHETIC_RGB_SIZES["test"], 10, 3, 32, 2, pattern_seed=0, name="synthetic-rgb")
    return replace(test, mean=train.mean, std=train.std)


def _caltech101(folder: Path, split: str) -> ImageList:
    """Caltech-101's fixed draw: CALTECH101_TRAIN_PER_CLASS images of every class train."""
    return layout_readers.caltech101(folder, split, CALTECH101_TRAIN_PER_CLASS, FIXED_SPLIT_SEED)


def _sun397(folder: Path, split: str) -> ImageList:
    """SUN397's partition 1, else a fixed draw of SUN397_PER_CLASS train and test images per class."""
    return layout_readers.sun397(folder, split, SUN397_PER_CLASS, FIXED_SPLIT_SEED)


def _register_all() -> None:
    cifar10 = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    cifar100 = {"train": ["train"], "test": ["test"]}
    sets = [
        file_set(
            "stl10",
            "STL10 labelled: 5,000 train / 8,000 test 96x96 colour images, 10 classes",
            "stl10_binary",
            "test_X.bin",
            reader=layout_readers.stl10(labelled=True),
            download=torchvision_download(("STL10", {"split": "train"})),
        ),
        file_set(
            "stl10-unlabeled",
            "STL10 unlabelled split (pretext): 100,000 96x96 colour images, no labels (train only)",
            "stl10_binary",
            "unlabeled_X.bin",
            splits=("train",),
            reader=layout_readers.stl10(labelled=False),
            download=torchvision_download(("STL10", {"split": "unlabeled"})),
        ),
        file_set(
            "imagenet",
            "ImageNet-1k (ILSVRC2012) folder layout: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (test = val)",
            "imagenet",
            "train",
            lister=layout_readers.class_tree("train", ("val",)),
            hint="download it from image-net.org and arrange val/ into class folders as train/ is",
        ),
        file_set(
            "cifar10",
            "CIFAR-10: 50,000 train / 10,000 test 32x32 colour images, 10 classes",
            "cifar-10-batches-py",
            "test_batch",
            reader=layout_readers.cifar(cifar10, "labels", 10, "cifar10"),
            download=torchvision_download(("CIFAR10", {"train": True})),
        ),
        file_set(
            "cifar100",
            "CIFAR-100: 50,000 train / 10,000 test 32x32 colour images, 100 classes",
            "cifar-100-python",
            "test",
            reader=layout_readers.cifar(cifar100, "fine_labels", 100, "cifar100"),
            download=torchvision_download(("CIFAR100", {"train": True})),
        ),
        file_set(
            "flowers102",
            "Oxford Flowers-102: official 1,020 train / 1,020 val / 6,149 test, 102 classes",
            "flowers-102",
            "setid.mat",
            splits=("train", "val", "test"),
            lister=layout_readers.flowers102,
            download=torchvision_download(("Flowers102", {})),
        ),
        file_set(
            "dtd",
            "Describable Textures: official partition 1, 1,880 train / 1,880 val / 1,880 test, 47 classes",
            "dtd/dtd",
            "labels/train1.txt",
            splits=("train", "val", "test"),
            lister=layout_readers.dtd,
            download=torchvision_download(("DTD", {})),
        ),
        file_set(
            "oxford-pets",
            "Oxford-IIIT Pets: 3,680 trainval / 3,669 test, 37 classes",
            "oxford-iiit-pet",
            "annotations/trainval.txt",
            lister=layout_readers.pets,
            download=torchvision_download(("OxfordIIITPet", {})),
        ),
        file_set(
            "food101",
            "Food-101: 75,750 train / 25,250 test, 101 classes",
            "food-101",
            "meta/classes.txt",
            lister=layout_readers.food101,
            download=torchvision_download(("Food101", {})),
        ),
        file_set(
            "fgvc-aircraft",
            "FGVC-Aircraft variants: official 3,334 train / 3,333 val / 3,333 test, 100 classes",
            "fgvc-aircraft-2013b",
            "data/variants.txt",
            splits=("train", "val", "test"),
            lister=layout_readers.aircraft,
            download=torchvision_download(("FGVCAircraft", {})),
        ),
        file_set(
            "stanford-cars",
            "Stanford Cars: 8,144 train / 8,041 test, 196 classes",
            "stanford_cars",
            "devkit/cars_meta.mat",
            lister=layout_readers.cars,
            hint="torchvision's download of Stanford Cars no longer works; fetch the archives by hand",
        ),
        file_set(
            "caltech101",
            "Caltech-101: 30 train images per class (fixed draw) / the rest test, 101 classes",
            "caltech101",
            "101_ObjectCategories",
            lister=_caltech101,
            download=torchvision_download(("Caltech101", {})),
        ),
        file_set(
            "sun397",
            "SUN397: official partition 1 (50 train / 50 test per class) or a fixed draw of the same sizes",
            "SUN397",
            "ClassName.txt",
            lister=_sun397,
            download=torchvision_download(("SUN397", {})),
            hint="add Partitions/ from the SUN397 site for the official partition",
        ),
        file_set(
            "voc2007",
            "PASCAL VOC2007 classification, multi-label: 2,501 train / 2,510 val / 4,952 test, 20 classes",
            "VOCdevkit/VOC2007",
            "Annotations",
            splits=("train", "val", "test"),
            lister=layout_readers.voc2007,
            download=torchvision_download(
                ("VOCDetection", {"year": "2007", "image_set": "trainval"}),
                ("VOCDetection", {"year": "2007-test", "image_set": "test"}),
            ),
        ),
        file_set(
            "cub200",
            "CUB-200-2011 (folder layout with images.txt): official 5,994 train / 5,794 test, 200 classes",
            "CUB_200_2011",
            "images.txt",
            lister=layout_readers.cub200,
            hint="download CUB_200_2011.tgz from the Caltech vision site and unpack it",
        ),
    ]
    for info in sets:
        register_dataset(info)
    register_dataset(
        DatasetInfo(
            name=FOLDER_PREFIX + "PATH",
            description="any image folder: name it folder:/path/to/it; train/<class>/*, test/<class>/* (or val/)",
            loader=_folder_placeholder,
            locations=lambda root: ["PATH/train, PATH/test (or PATH/val)"],
            presence=lambda root: False,
        )
    )
    register_dataset(
        DatasetInfo(
            name="synthetic-rgb",
            description="synthetic colour class patterns plus noise: 256 train / 64 test 32x32, 10 classes",
            loader=_synthetic_rgb,
            locations=lambda root: ["generated in memory"],
            presence=lambda root: True,
        )
    )


register_name_pattern(FOLDER_PREFIX, _image_folder)
_register_all()
