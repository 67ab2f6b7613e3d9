"""Readers of the on-disk layouts the paper-scale sets come in: one per layout (CIFAR batches, STL10 binaries,
MATLAB files, text and JSON split lists, VOC XML annotations, class folders), each listing a photo set's files
and labels (:class:`~bissl.data.registry.ImageList`) or reading a set stored as arrays. None checks checksums,
so any complete copy reads. Directories are listed through :func:`~bissl.data.registry.kept_listing`: once
per run (:func:`~bissl.data.registry.keep_listings`), however many splits, checks and loads read them.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bissl.data.folder_stream import IMAGENET_MEAN, IMAGENET_STD
from bissl.data.registry import ImageList, Lister, Reader, TensorDataset, kept_listing
from bissl.errors import DataError

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


# ---------------------------------------------------------------------------------------------------------
# Listing folders


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


def _image_files(directory: Path) -> list[str]:
    """Image files directly inside ``directory``, sorted by name (none when it is not a folder); listed once
    per run."""

    def listed() -> list[str]:
        if not directory.is_dir():
            return []
        return [str(path) for path in sorted(Path(entry.path) for entry in _entries(directory, _is_image))]

    return kept_listing(("image files", os.path.abspath(directory)), listed)


def _has_images(directory: Path) -> bool:
    """Whether ``directory`` holds at least one image file (from its listing, see :func:`_image_files`)."""
    return bool(_image_files(directory))


def _subfolders(directory: Path) -> list[str]:
    """Names of the folders inside ``directory``, sorted; listed once per run."""

    def listed() -> list[str]:
        if not directory.is_dir():
            raise DataError(f"{directory} is missing; the dataset folder is incomplete")
        return sorted(e.name for e in _entries(directory, lambda e: e.name[0] != "." and e.is_dir()))

    return kept_listing(("folders", os.path.abspath(directory)), listed)


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped; a missing file raises DataError naming it."""
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"cannot read {path} ({error}); the dataset folder is incomplete") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _listing(files: Sequence[str | Path], labels: list[int], num_classes: int) -> ImageList:
    return ImageList([str(f) for f in files], torch.tensor(labels, dtype=torch.int64), num_classes)


def _class_folders(directory: Path, classes: list[str]) -> ImageList:
    """Every image of ``directory/<class>/``, labelled by the class's position in ``classes``."""
    files: list[str] = []
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


def cifar(files: dict[str, list[str]], label_key: str, num_classes: int, name: str) -> Reader:
    """CIFAR-10/100: pickled batches ``files[split]``, labels under ``label_key``."""

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


def stl10(labelled: bool) -> Reader:
    """STL10 binaries: ``<split>_X.bin`` and ``<split>_y.bin``, or ``unlabeled_X.bin`` (no labels)."""

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


def flowers102(folder: Path, split: str) -> ImageList:
    """Oxford Flowers-102: ``setid.mat`` names the official splits, ``imagelabels.mat`` the labels."""
    image_labels = np.atleast_1d(_loadmat(folder / "imagelabels.mat")["labels"]).astype(np.int64)
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = np.atleast_1d(_loadmat(folder / "setid.mat")[key]).astype(np.int64)
    files = [folder / "jpg" / f"image_{i:05d}.jpg" for i in ids.tolist()]
    return _listing(files, [int(image_labels[i - 1]) - 1 for i in ids.tolist()], 102)


def dtd(folder: Path, split: str) -> ImageList:
    """Describable Textures: partition 1 of ``labels/<split>1.txt``; classes are the folders of ``images/``."""
    classes = _subfolders(folder / "images")
    index = {name: i for i, name in enumerate(classes)}
    lines = _read_lines(folder / "labels" / f"{split}1.txt")
    files = [folder / "images" / line for line in lines]
    return _listing(files, [index[line.split("/")[0]] for line in lines], len(classes))


def pets(folder: Path, split: str) -> ImageList:
    """Oxford-IIIT Pets: ``annotations/trainval.txt`` (train) and ``annotations/test.txt``."""
    name = "trainval" if split == "train" else "test"
    rows = [line.split() for line in _read_lines(folder / "annotations" / f"{name}.txt") if line[0] != "#"]
    files = [folder / "images" / f"{row[0]}.jpg" for row in rows]
    return _listing(files, [int(row[1]) - 1 for row in rows], 37)


def food101(folder: Path, split: str) -> ImageList:
    """Food-101: ``meta/<split>.json`` lists the images of every class of ``meta/classes.txt``."""
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


def aircraft(folder: Path, split: str) -> ImageList:
    """FGVC-Aircraft variants: ``data/images_variant_<split>.txt`` over the classes of ``data/variants.txt``."""
    classes = _read_lines(folder / "data" / "variants.txt")
    index = {name: i for i, name in enumerate(classes)}
    rows = [line.split(" ", 1) for line in _read_lines(folder / "data" / f"images_variant_{split}.txt")]
    files = [folder / "data" / "images" / f"{row[0]}.jpg" for row in rows]
    return _listing(files, [index[row[1].strip()] for row in rows], len(classes))


def cars(folder: Path, split: str) -> ImageList:
    """Stanford Cars: the devkit's ``.mat`` annotations (train) and ``cars_test_annos_withlabels.mat``."""
    names = np.atleast_1d(_loadmat(folder / "devkit" / "cars_meta.mat")["class_names"])
    if split == "train":
        annotations_path, images = folder / "devkit" / "cars_train_annos.mat", folder / "cars_train"
    else:
        annotations_path, images = folder / "cars_test_annos_withlabels.mat", folder / "cars_test"
    annotations = np.atleast_1d(_loadmat(annotations_path)["annotations"])
    files = [images / str(record["fname"]) for record in annotations]
    return _listing(files, [int(record["class"]) - 1 for record in annotations], len(names))


def caltech101(folder: Path, split: str, train_per_class: int, seed: int) -> ImageList:
    """Caltech-101: class folders of ``101_ObjectCategories`` (no background class); ``train_per_class`` images
    of every class (at most half of it, drawn with ``seed``) train, the rest test."""
    root = folder / "101_ObjectCategories"
    classes = [name for name in _subfolders(root) if name != "BACKGROUND_Google"]
    listing = _class_folders(root, classes)
    train = per_class_draw(listing.labels, lambda size: min(train_per_class, size // 2), seed)
    return _select(listing, train if split == "train" else ~train)


def sun397(folder: Path, split: str, per_class: int, seed: int) -> ImageList:
    """SUN397: partition 1 of ``Partitions/`` when present, else ``per_class`` train and as many test images
    of every class folder (at most half of it each, drawn with ``seed``)."""
    classes = _read_lines(folder / "ClassName.txt")
    index = {name: i for i, name in enumerate(classes)}
    partition = folder / "Partitions" / ("Training_01.txt" if split == "train" else "Testing_01.txt")
    if partition.is_file():
        lines = _read_lines(partition)
        files = [folder / line.lstrip("/") for line in lines]
        return _listing(files, [index[line.rsplit("/", 1)[0]] for line in lines], len(classes))
    listing = _class_folders(folder, [name.lstrip("/") for name in classes])
    keep = torch.zeros(len(listing.files), dtype=torch.bool)
    for order in per_class_orders(listing.labels, seed):
        take = min(per_class, order.numel() // 2)
        keep[order[:take] if split == "train" else order[take : 2 * take]] = True
    return _select(listing, keep)


def _voc_objects(path: Path) -> list[str]:
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError) as error:
        raise DataError(f"cannot read {path} ({error}); the dataset folder is incomplete") from None
    return [str(node.findtext("name", "")).strip() for node in tree.getroot().iter("object")]


def voc2007(folder: Path, split: str) -> ImageList:
    """PASCAL VOC2007, multi-label: ``ImageSets/Main/<split>.txt``, every object of each XML annotation."""
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


def cub200(folder: Path, split: str) -> ImageList:
    """CUB-200-2011: ``images.txt``, ``image_class_labels.txt`` and ``train_test_split.txt``."""
    paths = dict(line.split(" ", 1) for line in _read_lines(folder / "images.txt"))
    classes = dict(line.split() for line in _read_lines(folder / "image_class_labels.txt"))
    is_train = dict(line.split() for line in _read_lines(folder / "train_test_split.txt"))
    wanted = "1" if split == "train" else "0"
    ids = sorted((i for i in paths if is_train.get(i) == wanted), key=int)
    files = [folder / "images" / paths[i].strip() for i in ids]
    num_classes = max(int(c) for c in classes.values())
    return _listing(files, [int(classes[i]) - 1 for i in ids], num_classes)


def class_tree(train: str, test: tuple[str, ...]) -> Lister:
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
