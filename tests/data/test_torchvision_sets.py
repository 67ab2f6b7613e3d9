"""Paper-scale datasets: every reader on a tiny fake on-disk layout (class counts, split sizes, determinism, the
decode cache), the memory/disk choice, folder streams (order, sharding, exact resume, worker crops), and the
two-view augmentation's photometric entry for pre-cropped views."""

from __future__ import annotations

import json
import pickle
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from bissl.config import load_config
from bissl.data import folder_stream, torchvision_sets
from bissl.data.augment import TwoViewAugment
from bissl.data.folder_stream import (
    CropOptions,
    DiskDataset,
    LoaderStream,
    ViewReader,
    center_box,
    random_resized_box,
)
from bissl.data.registry import DATASETS, TensorDataset, describe_datasets, load_dataset
from bissl.data.stream import BatchStream
from bissl.data.torchvision_sets import (
    VOC_CLASSES,
    disk_dataset,
    has_official_val,
    list_images,
    reads_from_disk,
)
from bissl.errors import DataError
from bissl.train.data_sources import downstream_data, load_pretext_source, pretext_stream

SIZE = 8


def write_image(path: Path, value: int, size: tuple[int, int] = (12, 9), fmt: str = "JPEG") -> None:
    """A small flat-colour image whose colour encodes ``value`` (so decoded files can be told apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (value * 37 % 256, value * 91 % 256, value * 13 % 256)
    Image.new("RGB", size, colour).save(path, format=fmt)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $BISSL_DATA and a private download root, so only the fake layouts are found."""
    monkeypatch.delenv("BISSL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# ---------------------------------------------------------------------------------------------------------
# Fake layouts, one per reader


def make_flowers(root: Path) -> None:
    folder = root / "flowers-102"
    labels = np.array([1, 1, 2, 2, 3, 3, 1, 2, 3, 1, 2, 3])
    for image_id in range(1, 13):
        write_image(folder / "jpg" / f"image_{image_id:05d}.jpg", image_id)
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": labels[None, :]})
    scipy.io.savemat(
        folder / "setid.mat",
        {"trnid": np.array([[1, 3, 5]]), "valid": np.array([[2, 4, 6]]), "tstid": np.arange(7, 13)[None, :]},
    )


def make_dtd(root: Path) -> None:
    folder = root / "dtd" / "dtd"
    names = {"train": [], "val": [], "test": []}  # type: dict[str, list[str]]
    for c, texture in enumerate(["banded", "dotted", "woven"]):
        for i in range(6):
            relative = f"{texture}/{texture}_{i:04d}.jpg"
            write_image(folder / "images" / relative, 10 * c + i)
            names[("train", "val", "test")[i % 3]].append(relative)
    for split, lines in names.items():
        write_lines(folder / "labels" / f"{split}1.txt", lines)


def make_pets(root: Path) -> None:
    folder = root / "oxford-iiit-pet"
    trainval, test = [], []
    for breed in range(1, 4):
        for i in range(5):
            name = f"Breed{breed}_{i}"
            write_image(folder / "images" / f"{name}.jpg", breed * 10 + i)
            (test if i == 4 else trainval).append(f"{name} {breed} 1 {breed}")
    write_lines(folder / "annotations" / "trainval.txt", trainval)
    write_lines(folder / "annotations" / "test.txt", test)


def make_food(root: Path) -> None:
    folder = root / "food-101"
    classes = ["apple_pie", "pizza"]
    write_lines(folder / "meta" / "classes.txt", classes)
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for c, name in enumerate(classes):
        for i in range(4):
            write_image(folder / "images" / name / f"{i}.jpg", c * 4 + i)
            splits["train" if i < 3 else "test"].setdefault(name, []).append(f"{name}/{i}")
    for split, entries in splits.items():
        (folder / "meta" / f"{split}.json").write_text(json.dumps(entries))


def make_aircraft(root: Path) -> None:
    folder = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]
    write_lines(folder / "variants.txt", variants)
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, variant in enumerate(variants):
        for i, split in enumerate(["train", "train", "val", "test"]):
            image_id = f"{1000000 + 10 * c + i}"
            write_image(folder / "images" / f"{image_id}.jpg", 10 * c + i)
            rows[split].append(f"{image_id} {variant}")
    for split, lines in rows.items():
        write_lines(folder / f"images_variant_{split}.txt", lines)


def _struct(records: list[tuple[str, int]]) -> np.ndarray:
    array = np.zeros((len(records),), dtype=[("fname", "O"), ("class", "O")])
    for index, record in enumerate(records):
        array[index] = record
    return array


def make_cars(root: Path) -> None:
    folder = root / "stanford_cars"
    (folder / "devkit").mkdir(parents=True)
    scipy.io.savemat(
        folder / "devkit" / "cars_meta.mat",
        {"class_names": np.array(["AM General Hummer", "Acura RL", "Audi R8", "BMW M3"], dtype=object)},
    )
    train = [(f"{i:05d}.jpg", i % 4 + 1) for i in range(8)]
    test = [(f"{i:05d}.jpg", i % 4 + 1) for i in range(5)]
    for name, _ in train:
        write_image(folder / "cars_train" / name, int(name[:5]))
    for name, _ in test:
        write_image(folder / "cars_test" / name, 50 + int(name[:5]))
    scipy.io.savemat(folder / "devkit" / "cars_train_annos.mat", {"annotations": _struct(train)})
    scipy.io.savemat(folder / "cars_test_annos_withlabels.mat", {"annotations": _struct(test)})


def make_caltech(root: Path) -> None:
    folder = root / "caltech101" / "101_ObjectCategories"
    for c, category in enumerate(["BACKGROUND_Google", "Faces", "airplanes", "ant"]):
        for i in range(1, 6 + c):
            write_image(folder / category / f"image_{i:04d}.jpg", 10 * c + i)


def make_sun(root: Path, partitions: bool) -> None:
    folder = root / "SUN397"
    classes = ["/a/abbey", "/b/bakery/shop", "/c/canyon"]
    write_lines(folder / "ClassName.txt", classes)
    train, test = [], []
    for c, name in enumerate(classes):
        for i in range(6):
            relative = f"{name}/sun_{c}{i}.jpg"
            write_image(folder / relative.lstrip("/"), 10 * c + i)
            (train if i < 2 else test if i < 4 else []).append(relative)
    if partitions:
        write_lines(folder / "Partitions" / "Training_01.txt", train)
        write_lines(folder / "Partitions" / "Testing_01.txt", test)


def write_voc_annotation(path: Path, objects: list[tuple[str, int]]) -> None:
    annotation = ElementTree.Element("annotation")
    for name, difficult in objects:
        node = ElementTree.SubElement(annotation, "object")
        ElementTree.SubElement(node, "name").text = name
        ElementTree.SubElement(node, "difficult").text = str(difficult)
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(annotation).write(path)


VOC_OBJECTS = {
    "000001": [("dog", 0), ("person", 0)],
    "000002": [("car", 0), ("car", 1)],
    "000003": [("aeroplane", 0)],
    "000004": [("tvmonitor", 1), ("sofa", 0), ("cat", 0)],
    "000005": [("bird", 0)],
}


def make_voc(root: Path) -> None:
    folder = root / "VOCdevkit" / "VOC2007"
    for index, (image_id, objects) in enumerate(VOC_OBJECTS.items()):
        write_image(folder / "JPEGImages" / f"{image_id}.jpg", index)
        write_voc_annotation(folder / "Annotations" / f"{image_id}.xml", objects)
    write_lines(folder / "ImageSets" / "Main" / "train.txt", ["000001", "000002"])
    write_lines(folder / "ImageSets" / "Main" / "val.txt", ["000003"])
    write_lines(folder / "ImageSets" / "Main" / "test.txt", ["000004", "000005"])


def make_cub(root: Path) -> None:
    folder = root / "CUB_200_2011"
    images, labels, split = [], [], []
    for image_id in range(1, 10):
        label = (image_id - 1) % 3 + 1
        relative = f"{label:03d}.Bird_{label}/Bird_{image_id}.jpg"
        write_image(folder / "images" / relative, image_id)
        images.append(f"{image_id} {relative}")
        labels.append(f"{image_id} {label}")
        split.append(f"{image_id} {int(image_id <= 6)}")
    write_lines(folder / "images.txt", images)
    write_lines(folder / "image_class_labels.txt", labels)
    write_lines(folder / "train_test_split.txt", split)


def make_class_tree(folder: Path, test_name: str, classes: int = 3, per_class: int = 4) -> None:
    for split, count in (("train", per_class), (test_name, 2)):
        for c in range(classes):
            for i in range(count):
                write_image(folder / split / f"class{c}" / f"{i}.png", 10 * c + i, fmt="PNG")


# name -> (maker, {split: (size, classes)}, num_classes)
PHOTO_SETS = {
    "flowers102": (make_flowers, {"train": 3, "val": 3, "test": 6}, 102),
    "dtd": (make_dtd, {"train": 6, "val": 6, "test": 6}, 3),
    "oxford-pets": (make_pets, {"train": 12, "test": 3}, 37),
    "food101": (make_food, {"train": 6, "test": 2}, 2),
    "fgvc-aircraft": (make_aircraft, {"train": 6, "val": 3, "test": 3}, 3),
    "stanford-cars": (make_cars, {"train": 8, "test": 5}, 4),
    "cub200": (make_cub, {"train": 6, "test": 3}, 3),
    "voc2007": (make_voc, {"train": 2, "val": 1, "test": 2}, 20),
}


@pytest.mark.parametrize("name", sorted(PHOTO_SETS))
def test_photo_set_sizes_classes_and_cached_decode(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maker, sizes, num_classes = PHOTO_SETS[name]
    maker(tmp_path)
    assert DATASETS[name].is_present(str(tmp_path))
    assert DATASETS[name].splits == tuple(s for s in ("train", "val", "test") if s in sizes)
    for split, size in sizes.items():
        listing = list_images(name, split, root=str(tmp_path))
        assert len(listing.files) == size and listing.num_classes == num_classes
        assert all(Path(f).is_file() for f in listing.files)
        first = load_dataset(name, split, root=str(tmp_path), image_size=SIZE)
        assert first.images.shape == (size, 3, SIZE, SIZE) and first.images.dtype == torch.uint8
        assert first.num_classes == num_classes and first.mean == folder_stream.IMAGENET_MEAN
        assert torch.equal(first.labels, listing.labels.to(first.labels.dtype))
        # The second load comes from the cache next to the data: decoding is not called again.
        with monkeypatch.context() as patch:
            patch.setattr(torchvision_sets, "decode_all", _must_not_decode)
            second = load_dataset(name, split, root=str(tmp_path), image_size=SIZE)
        assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    cached = sorted(p.name for p in tmp_path.rglob(".bissl-cache/*.pt"))
    assert cached == sorted(f"{split}-{SIZE}px.pt" for split in sizes)


def _must_not_decode(*args: object, **kwargs: object) -> torch.Tensor:
    raise AssertionError("decoded again although the cache matches")


def test_labels_of_each_reader_follow_the_official_files(tmp_path: Path) -> None:
    make_flowers(tmp_path)
    assert list_images("flowers102", "test", str(tmp_path)).labels.tolist() == [0, 1, 2, 0, 1, 2]
    make_dtd(tmp_path)
    assert list_images("dtd", "val", str(tmp_path)).labels.tolist() == [0, 0, 1, 1, 2, 2]
    make_pets(tmp_path)
    assert list_images("oxford-pets", "test", str(tmp_path)).labels.tolist() == [0, 1, 2]
    make_aircraft(tmp_path)
    assert list_images("fgvc-aircraft", "train", str(tmp_path)).labels.tolist() == [0, 0, 1, 1, 2, 2]
    make_cars(tmp_path)
    assert list_images("stanford-cars", "test", str(tmp_path)).labels.tolist() == [0, 1, 2, 3, 0]
    make_cub(tmp_path)
    assert list_images("cub200", "test", str(tmp_path)).labels.tolist() == [0, 1, 2]
    make_food(tmp_path)
    assert list_images("food101", "test", str(tmp_path)).labels.tolist() == [0, 1]


def test_voc2007_is_multi_label_from_every_annotated_object(tmp_path: Path) -> None:
    make_voc(tmp_path)
    data = load_dataset("voc2007", "test", root=str(tmp_path), image_size=SIZE)
    assert data.multilabel and data.labels.shape == (2, 20) and data.labels.dtype == torch.float32
    positive = [{VOC_CLASSES[i] for i in row.nonzero().flatten().tolist()} for row in data.labels]
    assert positive == [{"tvmonitor", "sofa", "cat"}, {"bird"}]
    train = list_images("voc2007", "train", str(tmp_path))
    assert [{VOC_CLASSES[i] for i in r.nonzero().flatten().tolist()} for r in train.labels] == [
        {"dog", "person"},
        {"car"},
    ]


def test_caltech101_fixed_per_class_draw_without_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_caltech(tmp_path)
    monkeypatch.setattr(torchvision_sets, "CALTECH101_TRAIN_PER_CLASS", 2)
    train = list_images("caltech101", "train", str(tmp_path))
    test = list_images("caltech101", "test", str(tmp_path))
    assert train.num_classes == 3 and not any("BACKGROUND" in f for f in train.files + test.files)
    assert torch.bincount(train.labels).tolist() == [2, 2, 2]
    assert torch.bincount(test.labels).tolist() == [4, 5, 6]
    assert not set(train.files) & set(test.files)
    assert list_images("caltech101", "train", str(tmp_path)).files == train.files


@pytest.mark.parametrize("partitions", [True, False])
def test_sun397_partition_file_or_fixed_draw(
    partitions: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_sun(tmp_path, partitions)
    monkeypatch.setattr(torchvision_sets, "SUN397_PER_CLASS", 2)
    train = list_images("sun397", "train", str(tmp_path))
    test = list_images("sun397", "test", str(tmp_path))
    assert train.num_classes == 3
    assert torch.bincount(train.labels).tolist() == [2, 2, 2]
    assert torch.bincount(test.labels).tolist() == [2, 2, 2]
    assert not set(train.files) & set(test.files)
    if partitions:
        assert Path(train.files[0]).name == "sun_00.jpg" and Path(test.files[0]).name == "sun_02.jpg"
    assert list_images("sun397", "test", str(tmp_path)).files == test.files


def test_cifar_and_stl10_arrays(tmp_path: Path) -> None:
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for index, file in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        data = np.full((2, 3072), index, dtype=np.uint8)
        with open(batches / file, "wb") as handle:
            pickle.dump({"data": data, "labels": [index % 10, (index + 1) % 10]}, handle)
    train = load_dataset("cifar10", "train", root=str(tmp_path), image_size=SIZE)
    assert train.images.shape == (10, 3, SIZE, SIZE) and train.num_classes == 10
    assert train.labels.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert int(train.images[9].float().mean().round()) == 4
    hundred = tmp_path / "cifar-100-python"
    hundred.mkdir()
    for split in ("train", "test"):
        with open(hundred / split, "wb") as handle:
            pickle.dump({"data": np.zeros((3, 3072), np.uint8), "fine_labels": [99, 0, 5]}, handle)
    assert load_dataset("cifar100", "test", root=str(tmp_path)).num_classes == 100

    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    rng = np.random.default_rng(0)
    column_major = rng.integers(0, 256, (4, 3, 96, 96), dtype=np.uint8)
    (stl / "unlabeled_X.bin").write_bytes(column_major.tobytes())
    for split, count in (("train", 3), ("test", 2)):
        (stl / f"{split}_X.bin").write_bytes(column_major[:count].tobytes())
        (stl / f"{split}_y.bin").write_bytes(np.arange(1, count + 1, dtype=np.uint8).tobytes())
    unlabeled = load_dataset("stl10-unlabeled", "train", root=str(tmp_path))
    assert unlabeled.images.shape == (4, 3, 96, 96)
    # STL10 stores each channel column by column: the decoded image is the stored one transposed.
    assert torch.equal(unlabeled.images[1, 2], torch.from_numpy(column_major[1, 2].T.copy()))
    labelled = load_dataset("stl10", "train", root=str(tmp_path))
    assert labelled.labels.tolist() == [0, 1, 2] and labelled.num_classes == 10
    with pytest.raises(DataError, match="not one of train"):
        load_dataset("stl10-unlabeled", "test", root=str(tmp_path))


def test_image_folders_and_imagenet_layout(tmp_path: Path) -> None:
    make_class_tree(tmp_path / "my-images", "val")
    name = f"folder:{tmp_path / 'my-images'}"
    assert name not in DATASETS
    torchvision_sets.ensure_registered(name)
    train = load_dataset(name, "train", image_size=SIZE)
    test = load_dataset(name, "test", image_size=SIZE)
    assert (len(train), len(test), train.num_classes) == (12, 6, 3)
    make_class_tree(tmp_path / "imagenet", "val", classes=2, per_class=3)
    listing = list_images("imagenet", "test", str(tmp_path))
    assert len(listing.files) == 4 and listing.num_classes == 2


def test_missing_dataset_names_every_place_and_failed_download_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("dtd", "train", root=str(tmp_path), image_size=SIZE)
    message = str(info.value)
    assert str(tmp_path / "dtd" / "dtd") in message and "data.download=true" in message

    def offline(target: str) -> None:
        raise RuntimeError("no network\nsecond line")

    monkeypatch.setitem(DATASETS, "dtd", replace(DATASETS["dtd"], download=offline))
    with pytest.raises(DataError, match=r"download of dtd into .* failed \(no network\)") as failed:
        load_dataset("dtd", "train", root=str(tmp_path), download=True, image_size=SIZE)
    assert "\n" not in str(failed.value)


def test_data_list_shows_every_name_and_presence(tmp_path: Path) -> None:
    make_pets(tmp_path)
    listing = describe_datasets(str(tmp_path))
    for name in ("stl10-unlabeled", "imagenet", "cifar10", "cifar100", "flowers102", "dtd", "oxford-pets"):
        assert name in listing
    for name in ("food101", "fgvc-aircraft", "stanford-cars", "caltech101", "sun397", "voc2007", "cub200"):
        assert name in listing
    assert "folder:PATH" in listing
    lines = listing.splitlines()
    pets = next(i for i, line in enumerate(lines) if line.startswith("oxford-pets"))
    assert " present " in lines[pets] and str(tmp_path / "oxford-iiit-pet") in lines[pets + 1]
    dtd = next(line for line in lines if line.startswith("dtd "))
    assert " missing " in dtd


def test_downstream_uses_official_val_or_a_written_seeded_split(tmp_path: Path) -> None:
    make_flowers(tmp_path)
    make_pets(tmp_path)
    common = [f"data.root={tmp_path}", f"data.image_size={SIZE}"]
    assert has_official_val("flowers102") and not has_official_val("oxford-pets")
    config = load_config(None, ["data.downstream=flowers102", *common])
    data, task = downstream_data(config, tmp_path / "run")
    assert [len(data[s]) for s in ("train", "val", "test")] == [3, 3, 6] and task.num_classes == 102
    assert not (tmp_path / "run" / "splits").exists()
    config = load_config(None, ["data.downstream=oxford-pets", "data.val_fraction=0.25", *common])
    data, _ = downstream_data(config, tmp_path / "run")
    assert [len(data[s]) for s in ("train", "val", "test")] == [9, 3, 3]
    assert sorted(torch.bincount(data["val"].labels).tolist()) == [1, 1, 1]
    assert (tmp_path / "run" / "splits" / "oxford-pets.json").is_file()
    again, _ = downstream_data(
        load_config(None, ["data.downstream=oxford-pets", "data.split_seed=5", *common]), tmp_path / "run"
    )
    assert torch.equal(again["val"].images, data["val"].images)


# ---------------------------------------------------------------------------------------------------------
# Memory or disk, and the folder stream


def test_memory_or_disk_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_class_tree(tmp_path / "imagenet", "val", classes=2, per_class=3)
    root = str(tmp_path)
    assert not reads_from_disk("imagenet", SIZE, "auto", root, False)
    assert reads_from_disk("imagenet", SIZE, False, root, False)
    monkeypatch.setattr(torchvision_sets, "MEMORY_LIMIT_BYTES", 6 * 3 * SIZE * SIZE - 1)
    assert reads_from_disk("imagenet", SIZE, "auto", root, False)
    assert not reads_from_disk("imagenet", SIZE, True, root, False)
    assert not reads_from_disk("synthetic", SIZE, False, root, False)
    config = load_config(None, ["data.pretext=imagenet", f"data.root={root}", f"data.image_size={SIZE}"])
    source = load_pretext_source(config)
    assert isinstance(source, DiskDataset) and len(source) == 6
    stream = pretext_stream(config, source, 2, seed=0, device=torch.device("cpu"))
    assert isinstance(stream, LoaderStream)
    images, labels = next(stream)
    assert images.shape == (2, 2, 3, SIZE, SIZE) and images.dtype == torch.uint8 and labels.shape == (2,)
    with pytest.raises(DataError, match="read from disk"):
        from bissl.train.data_sources import load_data

        load_data(config, "pretext", "train")


def _disk_set(tmp_path: Path, count: int = 12) -> DiskDataset:
    """Noise images of different sizes (so that different crops give different pixels)."""
    rng = np.random.default_rng(0)
    files = []
    for index in range(count):
        path = tmp_path / "imgs" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (14 + (index * 7) % 9, 20 + index, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        files.append(str(path))
    return DiskDataset(files, torch.arange(count) % 3, 3, name="tiny")


def test_loader_stream_matches_batch_stream_order_and_shards(tmp_path: Path) -> None:
    disk = _disk_set(tmp_path)
    indexed = DiskDataset(disk.files, torch.arange(12), 12, name="tiny")
    in_memory = TensorDataset(torch.zeros((12, 1, 2, 2), dtype=torch.uint8), torch.arange(12), 12)
    whole = LoaderStream(indexed, 4, image_size=SIZE, mode="center", seed=3)
    reference = BatchStream(in_memory, 4, seed=3)
    order = [next(whole)[1].tolist() for _ in range(7)]
    assert order == [next(reference)[1].tolist() for _ in range(7)]
    assert (
        sorted(label for batch in order[:3] for label in batch) == list(range(12)) and order[3:6] != order[:3]
    )
    shards = [
        LoaderStream(indexed, 2, image_size=SIZE, mode="center", seed=3, rank=rank, world_size=2)
        for rank in range(2)
    ]
    for step in range(5):
        first, second = (next(shard)[1].tolist() for shard in shards)
        assert first + second == order[step]


def test_loader_stream_resumes_exactly_and_crops_are_worker_independent(tmp_path: Path) -> None:
    disk = _disk_set(tmp_path)
    options = CropOptions(scale=(0.2, 1.0), ratio=(0.5, 1.0))
    stream = LoaderStream(disk, 4, image_size=SIZE, mode="two-view", crop=options, seed=1)
    for _ in range(4):
        next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(5)]
    resumed = LoaderStream(disk, 4, image_size=SIZE, mode="two-view", crop=options, seed=1, num_workers=1)
    resumed.load_state_dict(state)
    for images, labels in expected:
        got_images, got_labels = next(resumed)
        assert torch.equal(got_images, images) and torch.equal(got_labels, labels)
    resumed.close()
    assert not torch.equal(expected[0][0][:, 0], expected[0][0][:, 1])
    with pytest.raises(DataError, match="batch_size"):
        LoaderStream(disk, 3, image_size=SIZE, seed=1).load_state_dict(state)


def test_random_boxes_respect_the_ranges_and_fall_back_to_the_centre() -> None:
    rng = np.random.default_rng(0)
    options = CropOptions(scale=(0.08, 1.0), ratio=(0.5, 1.0))
    for _ in range(300):
        left, top, width, height = random_resized_box(64, 40, options, rng)
        assert left >= 0 and top >= 0 and left + width <= 64 and top + height <= 40
        assert 0.08 * 64 * 40 * 0.8 <= width * height <= 64 * 40
        assert 0.5 * 0.8 <= width / height <= 1.0 * 1.25
    impossible = CropOptions(scale=(0.9, 1.0), ratio=(3.0, 4.0))
    assert random_resized_box(10, 10, impossible, rng) == (0.0, 3.0, 10.0, 3.0)
    assert center_box(30, 20) == (5.0, 0.0, 20.0, 20.0)


def test_worker_views_resize_the_box_and_flip(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, 10:] = 200
    Image.fromarray(pixels).save(path)
    reader = ViewReader(DiskDataset([str(path)], torch.tensor([0]), 1), 4, "center")
    centre, _ = reader[(0, 0, 0, 0)]
    assert centre.shape == (3, 4, 4) and int(centre[0, 0, 0]) == 0 and int(centre[0, 0, 3]) == 200
    flipping = ViewReader(
        reader.dataset, 4, "crop", CropOptions(scale=(1.0, 1.0), ratio=(2.0, 2.0), flip_p=1.0)
    )
    flipped, _ = flipping[(0, 0, 0, 0)]
    assert int(flipped[0, 0, 0]) == 200 and int(flipped[0, 0, 3]) == 0


def test_disk_dataset_limit_is_a_seeded_ordered_subset(tmp_path: Path) -> None:
    make_class_tree(tmp_path / "imagenet", "val", classes=2, per_class=5)
    full = disk_dataset("imagenet", "train", root=str(tmp_path))
    part = disk_dataset("imagenet", "train", root=str(tmp_path), limit=4, seed=2)
    assert len(part) == 4 and part.files == sorted(part.files, key=full.files.index)
    assert part.files == disk_dataset("imagenet", "train", root=str(tmp_path), limit=4, seed=2).files


def test_two_view_photometric_entry_for_precropped_views() -> None:
    augment = TwoViewAugment(SIZE, 3, folder_stream.IMAGENET_MEAN, folder_stream.IMAGENET_STD)
    views = torch.randint(0, 256, (4, 2, 3, SIZE, SIZE), dtype=torch.uint8)
    first = augment(views, torch.Generator().manual_seed(5))
    second = augment.photometric(views[:, 0], views[:, 1], torch.Generator().manual_seed(5))
    assert first[0].shape == (4, 3, SIZE, SIZE) and torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    # No crop or flip happens: with every photometric step off, the views are the inputs, normalised.
    plain = TwoViewAugment(
        SIZE,
        3,
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=(0.0, 0.0),
        solarize_p=(0.0, 0.0),
    )
    out1, out2 = plain(views)
    assert torch.allclose(out1, views[:, 0].float() / 255) and torch.allclose(out2, views[:, 1].float() / 255)
