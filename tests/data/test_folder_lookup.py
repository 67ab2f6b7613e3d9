"""Image folders (``folder:PATH``) resolve through the registry like any other name, and one run lists a folder
once: the check of a downstream folder, the loading of its splits and the detection of its channels share one
reading of every directory, while the next run reads the folder afresh."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bissl import cli
from bissl.config import load_config
from bissl.data import registry
from bissl.train.data_sources import downstream_data

SIZE = 8
TINY = ["data.pretext=synthetic", "model.width=4", "model.blocks=[1]", f"data.image_size={SIZE}"]


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "owl")) -> Path:
    """``root/train/<class>/`` with 3 images per class and ``root/test/<class>/`` with 2."""
    for split, count in (("train", 3), ("test", 2)):
        for index, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for number in range(count):
                colour = (60 * index % 256, 40 * number % 256, 128)
                Image.new("RGB", (SIZE, SIZE), colour).save(root / split / name / f"{number}.png")
    return root


def folders(classes: tuple[str, ...]) -> list[str]:
    """The directories of an image folder with ``classes``, relative to it."""
    return ["train", "test", *(f"{split}/{name}" for split in ("train", "test") for name in classes)]


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each directory is read (every listing goes through os.scandir)."""
    seen: Counter[str] = Counter()
    scandir = os.scandir

    def counting(path: str | os.PathLike[str] = ".") -> Iterator[os.DirEntry[str]]:
        seen[os.path.abspath(path)] += 1
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    return seen


def listed_in(seen: Counter[str], folder: Path) -> dict[str, int]:
    """The directories of ``folder`` that were read, relative to it, with how often."""
    return {
        str(Path(path).relative_to(folder)): count
        for path, count in seen.items()
        if Path(path).is_relative_to(folder)
    }


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("BISSL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_folder_names_resolve_through_the_registry(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_folder(home / "pets", ("cat", "dog"))
    name = "folder:~/pets"
    for earlier in (name, "folder:birds"):  # registered by another test of this process, under another HOME
        monkeypatch.delitem(registry.DATASETS, earlier, raising=False)
    assert name not in registry.DATASETS
    info = registry.dataset_info(name)
    assert registry.DATASETS[name] is info and registry.dataset_info(name) is info
    assert info.fixed_root == str(home / "pets") and info.photos and not info.official_val
    assert len(registry.load_dataset(name, "test", image_size=SIZE)) == 4
    image_folder(tmp_path / "work" / "birds", ("owl", "crow"))
    monkeypatch.chdir(tmp_path / "work")
    relative = registry.dataset_info("folder:birds")
    assert relative.fixed_root == "birds" and relative.where() == ["birds"]
    assert registry.list_images("folder:birds", "train").files[0] == str(Path("birds/train/crow/0.png"))


def test_downstream_folder_is_listed_once_for_its_check_splits_and_channels(
    tmp_path: Path, listings: Counter[str]
) -> None:
    folder = image_folder(tmp_path / "pets")
    config = load_config(None, [f"data.downstream=folder:{folder}", f"data.image_size={SIZE}"])
    data, task = downstream_data(config, tmp_path / "run")
    assert len(data["train"]) + len(data["val"]) == 9 and len(data["test"]) == 6 and task.num_classes == 3
    assert listed_in(listings, folder) == dict.fromkeys(folders(("cat", "dog", "owl")), 1)
    assert not registry.keeps_listings()


def test_a_cli_run_lists_the_folder_once_and_the_next_run_afresh(
    home: Path, tmp_path: Path, listings: Counter[str]
) -> None:
    folder = image_folder(tmp_path / "pets", ("cat", "dog"))

    def finetune(out: str) -> int:
        settings = [f"data.downstream=folder:{folder}", "finetune.epochs=1", "finetune.batch_size=2"]
        return cli.main(["--quiet", "finetune", "--out", str(tmp_path / out), *TINY, *settings])

    assert finetune("first") == 0
    assert listed_in(listings, folder) == dict.fromkeys(folders(("cat", "dog")), 1)
    listings.clear()
    image_folder(folder, ("cat", "dog", "owl"))
    assert finetune("second") == 0
    assert listed_in(listings, folder) == dict.fromkeys(folders(("cat", "dog", "owl")), 1)
    assert not registry.keeps_listings()
