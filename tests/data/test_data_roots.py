"""One search order for every dataset (data.root, $BISSL_DATA, ~/.cache/bissl), downloads into its first root,
and ``~`` in data roots and image folder names."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bissl.data import embedded, torchvision_sets
from bissl.data.registry import (
    DATASETS,
    data_roots,
    default_download_root,
    describe_datasets,
    describe_search_order,
    load_dataset,
)

from .test_datasets import fake_fashion_download


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private home and no $BISSL_DATA or system Fashion-MNIST: only what a test writes is found."""
    monkeypatch.delenv("BISSL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(embedded, "SYSTEM_FASHION_MNIST", str(tmp_path / "no-system-copy"))
    return tmp_path / "home"


def test_search_order_is_root_then_env_then_home_cache(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = home / ".cache" / "bissl"
    assert data_roots(None) == [cache]
    assert data_roots(str(tmp_path / "root")) == [tmp_path / "root", cache]
    monkeypatch.setenv("BISSL_DATA", str(tmp_path / "env"))
    assert data_roots(None) == [tmp_path / "env", cache]
    assert data_roots(str(tmp_path / "root")) == [tmp_path / "root", tmp_path / "env", cache]
    assert data_roots(str(tmp_path / "env")) == [tmp_path / "env", cache]  # each root once


def test_downloads_go_to_the_first_searched_root(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in (None, str(tmp_path / "env")):
        if env is None:
            monkeypatch.delenv("BISSL_DATA", raising=False)
        else:
            monkeypatch.setenv("BISSL_DATA", env)
        for root in (None, str(tmp_path / "root")):
            assert Path(default_download_root(root)) == data_roots(root)[0]


def test_tilde_in_roots_is_the_home_folder(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BISSL_DATA", "~/env")
    assert data_roots("~/data") == [home / "data", home / "env", home / ".cache" / "bissl"]


def test_every_dataset_follows_the_search_order(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BISSL_DATA", str(tmp_path / "env"))
    roots = [str(base) for base in data_roots(str(tmp_path / "root"))]
    fashion = DATASETS["fashion-mnist"].where(str(tmp_path / "root"))
    assert [place.rsplit("/fashion-mnist", 1)[0] for place in fashion[:-1:2]] == roots
    assert fashion[-1] == embedded.SYSTEM_FASHION_MNIST
    dtd = DATASETS["dtd"].where(str(tmp_path / "root"))
    assert dtd == [str(Path(base) / "dtd" / "dtd") for base in roots]


def test_data_list_states_the_search_order(home: Path, tmp_path: Path) -> None:
    line = describe_search_order(str(tmp_path / "root"))
    assert f"data.root ({tmp_path / 'root'}), then $BISSL_DATA, then ~/.cache/bissl" in line
    assert "$BISSL_DATA not set" in line and f"downloads into {tmp_path / 'root'}" in line
    listing = describe_datasets(str(tmp_path / "root")).splitlines()
    assert listing[0] == line
    assert any(text.startswith("fashion-mnist") for text in listing)


def test_fashion_mnist_downloaded_without_a_root_is_found_by_the_next_run(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(embedded, "_torchvision_fashion_mnist", fake_fashion_download(calls))
    assert len(load_dataset("fashion-mnist", "train", download=True)) == 3
    assert calls == [str(home / ".cache" / "bissl")]
    assert len(load_dataset("fashion-mnist", "test")) == 2  # no download=True this time
    assert DATASETS["fashion-mnist"].is_present(None)


def _image_folder(root: Path) -> None:
    for split in ("train", "test"):
        for index, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (100 * index, 50, 50)).save(root / split / name / "0.png")


def test_folder_name_expands_tilde(home: Path) -> None:
    _image_folder(home / "pets")
    assert torchvision_sets.folder_path("~/pets") == str(home / "pets")
    listing = torchvision_sets.list_images("folder:~/pets", "train")
    assert listing.files == [str(home / "pets" / "train" / c / "0.png") for c in ("cat", "dog")]


def test_relative_folder_is_taken_from_the_current_folder(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _image_folder(tmp_path / "work" / "pets")
    monkeypatch.chdir(tmp_path / "work")
    listing = torchvision_sets.list_images("folder:pets", "test")
    assert listing.files == [str(Path("pets") / "test" / c / "0.png") for c in ("cat", "dog")]
