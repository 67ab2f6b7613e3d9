"""Paper-scale datasets by name: STL10, ImageNet, CIFAR-10/100, Flowers102, DTD, Oxford-IIIT Pets, Food-101,
FGVC-Aircraft, Stanford Cars, Caltech-101, SUN397, VOC2007 (multi-label), CUB-200-2011 and any image folder.

Each set is read from the layout that torchvision's download (or the official archive) leaves on disk, by
readers written here without checksum checks, so any complete copy works. Photo sets are decoded once at the
run's image size (shorter side resized, centre square kept) into uint8 tensors that are cached next to the
data; a pretext set too large for memory is read batch by batch from disk instead (``folder_stream``). Splits
are the official ones where a dataset has them, else fixed seeded per-class draws (docs/paper-scale.md).
Every set is normalised with the ImageNet mean and std, as the reference does (their luma-weighted grey values
for one channel). Image folders (``folder:PATH``) whose images are all single-channel load as grey.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bissl.checkpoint import save_checkpoint
from bissl.data.embedded import synthetic_dataset
from bissl.data.folder_stream import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DiskDataset,
    decode_all,
    image_channels,
)
from bissl.data.registry import (
    DATASETS,
    DatasetInfo,
    TensorDataset,
    data_roots,
    default_download_root,
    grey_stats,
    register_dataset,
)
from bissl.errors import DataError

# Photo sets whose decoded pretext split would exceed this stay on disk when data.in_memory is "auto".
MEMORY_LIMIT_BYTES = 8 * 2**30
# Seed of the per-class draws of sets without an official split: fixed, so test numbers always compare.
FIXED_SPLIT_SEED = 0
CALTECH101_TRAIN_PER_CLASS = 30
SUN397_PER_CLASS = 50
CACHE_FOLDER = ".bissl-cache"
CACHE_VERSION = 1
DECODE_WORKERS_FROM = 2048
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
STL10_SIDE = 96
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
FOLDER_PREFIX = "folder:"
SYNTHETIC_RGB_SIZES = {"train": 256, "test": 64}


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


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under a data root and how to read a split: ``lister`` for photo sets (files and
    labels), ``reader`` for sets stored as arrays (uint8 images at their native size). Photo sets decode as
    RGB, or as grey when ``detect_grey`` and every image of every split is single-channel."""

    name: str
    description: str
    folder: str
    marker: str
    splits: tuple[str, ...] = ("train", "test")
    lister: Lister | None = None
    reader: Reader | None = None
    download: Downloader | None = None
    hint: str = ""
    fixed_root: str | None = None
    detect_grey: bool = False


SPECS: dict[str, DatasetSpec] = {}


# ---------------------------------------------------------------------------------------------------------
# Finding, downloading, listing


def locations(spec: DatasetSpec, root: str | None) -> list[Path]:
    """Every folder where ``spec`` is looked for: its folder under each data root (:func:`data_roots`)."""
    if spec.fixed_root is not None:
        return [Path(spec.fixed_root)]
    return [base / spec.folder for base in data_roots(root)]


def find_folder(spec: DatasetSpec, root: str | None) -> Path | None:
    """The first searched folder that holds the dataset's marker file, or None."""
    for folder in locations(spec, root):
        if (folder / spec.marker).exists():
            return folder
    return None


def dataset_folder(spec: DatasetSpec, root: str | None, download: bool) -> Path:
    """The dataset's folder, downloaded with torchvision first when allowed and missing."""
    folder = find_folder(spec, root)
    if folder is not None:
        return folder
    searched = ", ".join(str(place) for place in locations(spec, root))
    if spec.fixed_root is not None:
        state = "has no train/ folder" if Path(spec.fixed_root).is_dir() else "does not exist"
        raise DataError(
            f"image folder {spec.fixed_root} ({spec.name}) {state}; folder:PATH needs PATH/train/<class>/ "
            "images and PATH/test/<class>/ (or val/)"
        )
    if download and spec.download is not None:
        target = default_download_root(root)
        try:
            spec.download(target)
        except Exception as error:  # any failure of a download is reported as one line
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(
                f"download of {spec.name} into {target} failed ({message}); {spec.hint or 'fetch it by hand'}"
            ) from None
        folder = Path(target) / spec.folder
        if (folder / spec.marker).exists():
            return folder
        raise DataError(f"download of {spec.name} into {target} did not produce {folder / spec.marker}")
    how = "pass data.download=true, " if spec.download is not None else ""
    raise DataError(
        f"{spec.name} not found in {searched}; {how}set data.root or BISSL_DATA to a folder holding "
        f"{spec.folder}/{spec.marker}" + (f" ({spec.hint})" if spec.hint else "")
    )


def spec_for(name: str) -> DatasetSpec:
    """The spec of a registered paper-scale dataset (``folder:PATH`` names are registered on first use)."""
    ensure_registered(name)
    if name not in SPECS:
        raise DataError(f"dataset {name!r} is not read from files")
    return SPECS[name]


def list_images(name: str, split: str, root: str | None = None, download: bool = False) -> ImageList:
    """The files and labels of ``split`` of a photo set."""
    spec = spec_for(name)
    if spec.lister is None:
        raise DataError(f"dataset {name!r} is stored as arrays, not image files")
    if split not in spec.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; its splits: {', '.join(spec.splits)}")
    return spec.lister(dataset_folder(spec, root, download), split)


def _unreadable(error: OSError, directory: Path) -> DataError:
    """One line naming the entry of ``directory`` that could not be read (a symbolic link loop, say)."""
    path = error.filename or directory
    if error.errno == errno.ELOOP:
        return DataError(
            f"{path} is a symbolic link loop; remove the link or point it at a real folder or file"
        )
    return DataError(f"cannot read {path} ({error.strerror or error}); fix or remove it")


def _entries(directory: Path, keep: Callable[[os.DirEntry[str]], bool]) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` that ``keep`` accepts; an unreadable entry raises DataError naming it."""
    try:
        with os.scandir(directory) as scan:
            return [entry for entry in scan if keep(entry)]
    except OSError as error:
        raise _unreadable(error, directory) from None


def _is_image(entry: os.DirEntry[str]) -> bool:
    return Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS and entry.is_file()


def _image_files(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(Path(entry.path) for entry in _entries(directory, _is_image))


def _has_images(directory: Path) -> bool:
    """Whether ``directory`` holds at least one image file (stops at the first)."""
    if not directory.is_dir():
        return False
    try:
        with os.scandir(directory) as scan:
            return any(_is_image(entry) for entry in scan)
    except OSError as error:
        raise _unreadable(error, directory) from None


def _subfolders(directory: Path) -> list[str]:
    """Names of the folders inside ``directory``, sorted."""
    if not directory.is_dir():
        raise DataError(f"{directory} is missing; the dataset folder is incomplete")
    return sorted(e.name for e in _entries(directory, lambda e: e.name[0] != "." and e.is_dir()))


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped; a missing file raises DataError naming it."""
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"cannot read {path} ({error}); the dataset folder is incomplete") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _listing(files: list[Path], labels: list[int], num_classes: int) -> ImageList:
    return ImageList([str(f) for f in files], torch.tensor(labels, dtype=torch.int64), num_classes)


def _class_folders(directory: Path, classes: list[str]) -> ImageList:
    """Every image of ``directory/<class>/``, labelled by the class's position in ``classes``."""
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        members = _image_files(directory / name)
        files += members
        labels += [index] * len(members)
    if not files:
        raise DataError(f"{directory} holds no images in class folders")
    return _listing(files, labels, len(classes))


def per_class_orders(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """For every class (in label order), the positions of its members in a random order fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    orders = []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        orders.append(members[torch.randperm(members.numel(), generator=generator)])
    return orders


def per_class_draw(labels: torch.Tensor, counts: Callable[[int], int], seed: int) -> torch.Tensor:
    """A boolean mask choosing ``counts(class size)`` members of every class at random (fixed by ``seed``)."""
    chosen = torch.zeros(labels.shape[0], dtype=torch.bool)
    for order in per_class_orders(labels, seed):
        chosen[order[: counts(order.numel())]] = True
    return chosen


def _select(listing: ImageList, mask: torch.Tensor) -> ImageList:
    index = mask.nonzero().flatten()
    return replace(listing, files=[listing.files[i] for i in index.tolist()], labels=listing.labels[index])


# ---------------------------------------------------------------------------------------------------------
# Readers: one per on-disk layout


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise DataError(f"cannot read {path} ({error}); delete the folder and fetch it again") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} is not a CIFAR batch file")
    return entry


def _cifar(files: dict[str, list[str]], label_key: str, num_classes: int, name: str) -> Reader:
    def read(folder: Path, split: str) -> TensorDataset:
        images: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for file in files[split]:
            entry = _unpickle(folder / file)
            try:
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(entry[label_key], dtype=np.int64))
            except (KeyError, ValueError) as error:
                raise DataError(f"{folder / file} is not a CIFAR batch file ({error})") from None
        return TensorDataset(
            images=torch.from_numpy(np.concatenate(images)),
            labels=torch.from_numpy(np.concatenate(labels)),
            num_classes=num_classes,
            name=name,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    return read


def _stl10_images(path: Path) -> torch.Tensor:
    """STL10 binary images: column-major 96x96x3 bytes per image, returned as (N, 3, 96, 96)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DataError(f"cannot read {path} ({error}); delete the folder and fetch it again") from None
    per_image = 3 * STL10_SIDE * STL10_SIDE
    if raw.size % per_image:
        raise DataError(f"{path} holds {raw.size} bytes, not a whole number of 96x96 colour images")
    images = torch.from_numpy(raw).view(-1, 3, STL10_SIDE, STL10_SIDE)
    return images.transpose(2, 3).contiguous()


def _stl10(labelled: bool) -> Reader:
    def read(folder: Path, split: str) -> TensorDataset:
        if not labelled:
            images = _stl10_images(folder / "unlabeled_X.bin")
            labels = torch.zeros(images.shape[0], dtype=torch.int64)
            return TensorDataset(
                images, labels, 1, name="stl10-unlabeled", mean=IMAGENET_MEAN, std=IMAGENET_STD
            )
        images = _stl10_images(folder / f"{split}_X.bin")
        try:
            raw_labels = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8)
        except OSError as error:
            raise DataError(f"cannot read {folder / f'{split}_y.bin'} ({error})") from None
        labels = torch.from_numpy(raw_labels.astype(np.int64) - 1)
        return TensorDataset(images, labels, 10, name="stl10", mean=IMAGENET_MEAN, std=IMAGENET_STD)

    return read


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return dict(loadmat(path, squeeze_me=True))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path} ({error}); the dataset folder is incomplete") from None


def _flowers102(folder: Path, split: str) -> ImageList:
    image_labels = np.atleast_1d(_loadmat(folder / "imagelabels.mat")["labels"]).astype(np.int64)
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = np.atleast_1d(_loadmat(folder / "setid.mat")[key]).astype(np.int64)
    files = [folder / "jpg" / f"image_{i:05d}.jpg" for i in ids.tolist()]
    return _listing(files, [int(image_labels[i - 1]) - 1 for i in ids.tolist()], 102)


def _dtd(folder: Path, split: str) -> ImageList:
    classes = _subfolders(folder / "images")
    index = {name: i for i, name in enumerate(classes)}
    lines = _read_lines(folder / "labels" / f"{split}1.txt")
    files = [folder / "images" / line for line in lines]
    return _listing(files, [index[line.split("/")[0]] for line in lines], len(classes))


def _pets(folder: Path, split: str) -> ImageList:
    name = "trainval" if split == "train" else "test"
    rows = [line.split() for line in _read_lines(folder / "annotations" / f"{name}.txt") if line[0] != "#"]
    files = [folder / "images" / f"{row[0]}.jpg" for row in rows]
    return _listing(files, [int(row[1]) - 1 for row in rows], 37)


def _food101(folder: Path, split: str) -> ImageList:
    classes = _read_lines(folder / "meta" / "classes.txt")
    try:
        entries = json.loads((folder / "meta" / f"{split}.json").read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {folder / 'meta' / f'{split}.json'} ({error})") from None
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        for entry in entries.get(name, []):
            files.append(folder / "images" / f"{entry}.jpg")
            labels.append(index)
    return _listing(files, labels, len(classes))


def _aircraft(folder: Path, split: str) -> ImageList:
    classes = _read_lines(folder / "data" / "variants.txt")
    index = {name: i for i, name in enumerate(classes)}
    rows = [line.split(" ", 1) for line in _read_lines(folder / "data" / f"images_variant_{split}.txt")]
    files = [folder / "data" / "images" / f"{row[0]}.jpg" for row in rows]
    return _listing(files, [index[row[1].strip()] for row in rows], len(classes))


def _cars(folder: Path, split: str) -> ImageList:
    names = np.atleast_1d(_loadmat(folder / "devkit" / "cars_meta.mat")["class_names"])
    if split == "train":
        annotations_path, images = folder / "devkit" / "cars_train_annos.mat", folder / "cars_train"
    else:
        annotations_path, images = folder / "cars_test_annos_withlabels.mat", folder / "cars_test"
    annotations = np.atleast_1d(_loadmat(annotations_path)["annotations"])
    files = [images / str(record["fname"]) for record in annotations]
    return _listing(files, [int(record["class"]) - 1 for record in annotations], len(names))


def _caltech101(folder: Path, split: str) -> ImageList:
    root = folder / "101_ObjectCategories"
    classes = [name for name in _subfolders(root) if name != "BACKGROUND_Google"]
    listing = _class_folders(root, classes)
    train = per_class_draw(
        listing.labels, lambda size: min(CALTECH101_TRAIN_PER_CLASS, size // 2), FIXED_SPLIT_SEED
    )
    return _select(listing, train if split == "train" else ~train)


def _sun397(folder: Path, split: str) -> ImageList:
    classes = _read_lines(folder / "ClassName.txt")
    index = {name: i for i, name in enumerate(classes)}
    partition = folder / "Partitions" / ("Training_01.txt" if split == "train" else "Testing_01.txt")
    if partition.is_file():
        lines = _read_lines(partition)
        files = [folder / line.lstrip("/") for line in lines]
        return _listing(files, [index[line.rsplit("/", 1)[0]] for line in lines], len(classes))
    listing = _class_folders(folder, [name.lstrip("/") for name in classes])
    keep = torch.zeros(len(listing.files), dtype=torch.bool)
    for order in per_class_orders(listing.labels, FIXED_SPLIT_SEED):
        take = min(SUN397_PER_CLASS, order.numel() // 2)
        keep[order[:take] if split == "train" else order[take : 2 * take]] = True
    return _select(listing, keep)


def _voc_objects(path: Path) -> list[str]:
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError) as error:
        raise DataError(f"cannot read {path} ({error}); the dataset folder is incomplete") from None
    return [str(node.findtext("name", "")).strip() for node in tree.getroot().iter("object")]


def _voc2007(folder: Path, split: str) -> ImageList:
    ids_path = folder / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_path.is_file():
        raise DataError(
            f"{ids_path} is missing; VOC2007's test images come in their own archive (VOCtest_06-Nov-2007.tar)"
        )
    ids = _read_lines(ids_path)
    index = {name: i for i, name in enumerate(VOC_CLASSES)}
    labels = torch.zeros((len(ids), len(VOC_CLASSES)), dtype=torch.float32)
    for row, image_id in enumerate(ids):
        for name in _voc_objects(folder / "Annotations" / f"{image_id}.xml"):
            if name not in index:
                raise DataError(f"{folder / 'Annotations' / f'{image_id}.xml'} names unknown class {name!r}")
            labels[row, index[name]] = 1.0
    files = [str(folder / "JPEGImages" / f"{image_id}.jpg") for image_id in ids]
    return ImageList(files, labels, len(VOC_CLASSES), multilabel=True)


def _cub200(folder: Path, split: str) -> ImageList:
    paths = dict(line.split(" ", 1) for line in _read_lines(folder / "images.txt"))
    classes = dict(line.split() for line in _read_lines(folder / "image_class_labels.txt"))
    is_train = dict(line.split() for line in _read_lines(folder / "train_test_split.txt"))
    wanted = "1" if split == "train" else "0"
    ids = sorted((i for i in paths if is_train.get(i) == wanted), key=int)
    files = [folder / "images" / paths[i].strip() for i in ids]
    num_classes = max(int(c) for c in classes.values())
    return _listing(files, [int(classes[i]) - 1 for i in ids], num_classes)


def _class_tree(train: str, test: tuple[str, ...]) -> Lister:
    """Images in ``<split folder>/<class>/``; classes are the folders of ``train``; the test split is the first
    of ``test`` that exists."""

    def lister(folder: Path, split: str) -> ImageList:
        classes = _subfolders(folder / train)
        if split == "train":
            return _class_folders(folder / train, classes)
        for name in test:
            if (folder / name).is_dir():
                _refuse_unknown_classes(folder / train, folder / name, classes)
                return _class_folders(folder / name, classes)
        raise DataError(f"{folder} has no {' or '.join(test)} folder of class folders for the test split")

    return lister


def _refuse_unknown_classes(train: Path, test: Path, classes: list[str]) -> None:
    """Refuse a test folder with images of a class that has no training images (it could never be predicted,
    and the labels are the train folder's classes)."""
    known = set(classes)
    unknown = [
        name
        for name in _subfolders(test)
        if (name not in known or not _has_images(train / name)) and _has_images(test / name)
    ]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataError(
            f"test class folder(s) {shown} in {test} have no training images in {train}; add them to "
            f"{train.name}/ or remove them from {test.name}/ (the classes are those of {train.name}/)"
        )


# ---------------------------------------------------------------------------------------------------------
# Downloads through torchvision


def _torchvision(*calls: tuple[str, dict[str, Any]]) -> Downloader:
    """A downloader calling ``torchvision.datasets.<Class>(target, download=True, **options)`` in turn."""

    def download(target: str) -> None:
        import torchvision.datasets as tv

        for class_name, options in calls:
            getattr(tv, class_name)(target, download=True, **options)

    return download


# ---------------------------------------------------------------------------------------------------------
# Decoding with a cache next to the data


def _cache_key(listing: ImageList, image_size: int, channels: int = 3) -> str:
    grey = ":grey" if channels == 1 else ""
    digest = hashlib.sha256(f"{CACHE_VERSION}:{image_size}:{listing.num_classes}{grey}".encode())
    digest.update("\n".join(listing.files).encode())
    digest.update(listing.labels.numpy().tobytes())
    return digest.hexdigest()


def cache_files(name: str, folder: Path, split: str, image_size: int, channels: int = 3) -> list[Path]:
    """Where decoded images are cached: next to the data, else under the download root."""
    file = f"{split}-{image_size}px.pt" if channels == 3 else f"{split}-{image_size}px-grey.pt"
    safe = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    fallback = (
        Path(default_download_root(None))
        / CACHE_FOLDER
        / f"{name.replace(':', '_').replace('/', '_')}-{safe}"
    )
    return [folder / CACHE_FOLDER / file, fallback / file]


def decode_cached(
    name: str, folder: Path, split: str, listing: ImageList, image_size: int, channels: int = 3
) -> torch.Tensor:
    """The split's images at ``image_size`` (uint8 (N, C, S, S)), from the cache when it matches the listing."""
    key = _cache_key(listing, image_size, channels)
    candidates = cache_files(name, folder, split, image_size, channels)
    for path in candidates:
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged cache is rebuilt
                continue
            if isinstance(cached, dict) and cached.get("key") == key:
                images: torch.Tensor = cached["images"]
                return images
    source = DiskDataset(
        listing.files, listing.labels, listing.num_classes, listing.multilabel, name=name, channels=channels
    )
    workers = min(8, os.cpu_count() or 1) if len(source) >= DECODE_WORKERS_FROM else 0
    images = decode_all(source, image_size, num_workers=workers)
    for path in candidates:
        try:
            save_checkpoint(path, {"key": key, "images": images})
            break
        except OSError:
            continue
    return images


_DETECTED_CHANNELS: dict[tuple[str, str], int] = {}


def photo_channels(name: str, root: str | None = None, download: bool = False) -> int:
    """Channels a photo set decodes to: 3, or 1 for a ``detect_grey`` set (image folders) whose images are all
    single-channel in every split. Found once per folder and process (only headers are read)."""
    spec = spec_for(name)
    if not spec.detect_grey:
        return 3
    folder = dataset_folder(spec, root, download)
    key = (name, str(folder.resolve()))
    if key not in _DETECTED_CHANNELS:
        files = [f for split in spec.splits for f in _split_files(name, split, root, download)]
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


def load_photos(name: str, split: str, root: str | None, download: bool, image_size: int) -> TensorDataset:
    """A photo set's split decoded at ``image_size`` into memory (cached for the next run)."""
    spec = spec_for(name)
    folder = dataset_folder(spec, root, download)
    listing = list_images(name, split, root, download)
    channels = photo_channels(name, root, download)
    images = decode_cached(name, folder, split, listing, image_size, channels)
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
    spec = spec_for(name)
    if spec.reader is None:
        raise DataError(f"dataset {name!r} is not stored as arrays")
    if split not in spec.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; its splits: {', '.join(spec.splits)}")
    return spec.reader(dataset_folder(spec, root, download), split)


# ---------------------------------------------------------------------------------------------------------
# Registry and the choice between memory and disk


def register_spec(spec: DatasetSpec, *, replace_existing: bool = False) -> None:
    """Add ``spec`` to the dataset registry (``bissl data list`` shows it)."""
    photos = spec.lister is not None
    SPECS[spec.name] = spec
    register_dataset(
        DatasetInfo(
            name=spec.name,
            description=spec.description,
            loader=partial(_native_photos, spec.name) if photos else partial(_read_arrays, spec.name),
            locations=lambda root: [str(place) for place in locations(spec, root)],
            presence=lambda root: find_folder(spec, root) is not None,
            splits=spec.splits,
            sized_loader=partial(load_photos, spec.name) if photos else None,
        ),
        replace_existing=replace_existing,
    )


def folder_path(path: str) -> str:
    """The folder of ``folder:PATH``: ``~`` expanded; a relative path stays relative to the current folder."""
    return os.path.expanduser(path)


def ensure_registered(name: str) -> None:
    """Register ``folder:PATH`` (PATH/train/<class>/*, and PATH/test or PATH/val) on first use."""
    if name in DATASETS or not name.startswith(FOLDER_PREFIX):
        return
    path = name[len(FOLDER_PREFIX) :]
    if not path:
        raise DataError("dataset name 'folder:' needs a path, e.g. folder:/data/my-images")
    path = folder_path(path)
    register_spec(
        DatasetSpec(
            name=name,
            description=f"image folder {path}: train/<class>/*, test/<class>/* (or val/); grey when all images are",
            folder=".",
            marker="train",
            lister=_class_tree("train", ("test", "val")),
            fixed_root=path,
            detect_grey=True,
        )
    )


def has_official_val(name: str) -> bool:
    """Whether the dataset ships its own validation split (then no seeded split is drawn)."""
    ensure_registered(name)
    return name in DATASETS and "val" in DATASETS[name].splits


def is_photo_set(name: str) -> bool:
    """Whether the dataset is image files (decoded per image) rather than arrays."""
    ensure_registered(name)
    return name in SPECS and SPECS[name].lister is not None


def reads_from_disk(
    name: str, image_size: int, in_memory: bool | Literal["auto"], root: str | None, download: bool
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


def _register_all() -> None:
    cifar10 = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    cifar100 = {"train": ["train"], "test": ["test"]}
    specs = [
        DatasetSpec(
            "stl10",
            "STL10 labelled: 5,000 train / 8,000 test 96x96 colour images, 10 classes",
            "stl10_binary",
            "test_X.bin",
            reader=_stl10(labelled=True),
            download=_torchvision(("STL10", {"split": "train"})),
        ),
        DatasetSpec(
            "stl10-unlabeled",
            "STL10 unlabelled split (pretext): 100,000 96x96 colour images, no labels (train only)",
            "stl10_binary",
            "unlabeled_X.bin",
            splits=("train",),
            reader=_stl10(labelled=False),
            download=_torchvision(("STL10", {"split": "unlabeled"})),
        ),
        DatasetSpec(
            "imagenet",
            "ImageNet-1k (ILSVRC2012) folder layout: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (test = val)",
            "imagenet",
            "train",
            lister=_class_tree("train", ("val",)),
            hint="download it from image-net.org and arrange val/ into class folders as train/ is",
        ),
        DatasetSpec(
            "cifar10",
            "CIFAR-10: 50,000 train / 10,000 test 32x32 colour images, 10 classes",
            "cifar-10-batches-py",
            "test_batch",
            reader=_cifar(cifar10, "labels", 10, "cifar10"),
            download=_torchvision(("CIFAR10", {"train": True})),
        ),
        DatasetSpec(
            "cifar100",
            "CIFAR-100: 50,000 train / 10,000 test 32x32 colour images, 100 classes",
            "cifar-100-python",
            "test",
            reader=_cifar(cifar100, "fine_labels", 100, "cifar100"),
            download=_torchvision(("CIFAR100", {"train": True})),
        ),
        DatasetSpec(
            "flowers102",
            "Oxford Flowers-102: official 1,020 train / 1,020 val / 6,149 test, 102 classes",
            "flowers-102",
            "setid.mat",
            splits=("train", "val", "test"),
            lister=_flowers102,
            download=_torchvision(("Flowers102", {})),
        ),
        DatasetSpec(
            "dtd",
            "Describable Textures: official partition 1, 1,880 train / 1,880 val / 1,880 test, 47 classes",
            "dtd/dtd",
            "labels/train1.txt",
            splits=("train", "val", "test"),
            lister=_dtd,
            download=_torchvision(("DTD", {})),
        ),
        DatasetSpec(
            "oxford-pets",
            "Oxford-IIIT Pets: 3,680 trainval / 3,669 test, 37 classes",
            "oxford-iiit-pet",
            "annotations/trainval.txt",
            lister=_pets,
            download=_torchvision(("OxfordIIITPet", {})),
        ),
        DatasetSpec(
            "food101",
            "Food-101: 75,750 train / 25,250 test, 101 classes",
            "food-101",
            "meta/classes.txt",
            lister=_food101,
            download=_torchvision(("Food101", {})),
        ),
        DatasetSpec(
            "fgvc-aircraft",
            "FGVC-Aircraft variants: official 3,334 train / 3,333 val / 3,333 test, 100 classes",
            "fgvc-aircraft-2013b",
            "data/variants.txt",
            splits=("train", "val", "test"),
            lister=_aircraft,
            download=_torchvision(("FGVCAircraft", {})),
        ),
        DatasetSpec(
            "stanford-cars",
            "Stanford Cars: 8,144 train / 8,041 test, 196 classes",
            "stanford_cars",
            "devkit/cars_meta.mat",
            lister=_cars,
            hint="torchvision's download of Stanford Cars no longer works; fetch the archives by hand",
        ),
        DatasetSpec(
            "caltech101",
            "Caltech-101: 30 train images per class (fixed draw) / the rest test, 101 classes",
            "caltech101",
            "101_ObjectCategories",
            lister=_caltech101,
            download=_torchvision(("Caltech101", {})),
        ),
        DatasetSpec(
            "sun397",
            "SUN397: official partition 1 (50 train / 50 test per class) or a fixed draw of the same sizes",
            "SUN397",
            "ClassName.txt",
            lister=_sun397,
            download=_torchvision(("SUN397", {})),
            hint="add Partitions/ from the SUN397 site for the official partition",
        ),
        DatasetSpec(
            "voc2007",
            "PASCAL VOC2007 classification, multi-label: 2,501 train / 2,510 val / 4,952 test, 20 classes",
            "VOCdevkit/VOC2007",
            "Annotations",
            splits=("train", "val", "test"),
            lister=_voc2007,
            download=_torchvision(
                ("VOCDetection", {"year": "2007", "image_set": "trainval"}),
                ("VOCDetection", {"year": "2007-test", "image_set": "test"}),
            ),
        ),
        DatasetSpec(
            "cub200",
            "CUB-200-2011 (folder layout with images.txt): official 5,994 train / 5,794 test, 200 classes",
            "CUB_200_2011",
            "images.txt",
            lister=_cub200,
            hint="download CUB_200_2011.tgz from the Caltech vision site and unpack it",
        ),
    ]
    for spec in specs:
        register_spec(spec)
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


_register_all()
