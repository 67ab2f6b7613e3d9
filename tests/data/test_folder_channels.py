"""Image folders keep their channels: grey folders load as one channel, data.channels converts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bissl.config import load_config
from bissl.data.embedded import synthetic_dataset
from bissl.data.folder_stream import IMAGENET_MEAN, IMAGENET_STD, DiskDataset, LoaderStream, image_channels
from bissl.data.registry import LUMA_WEIGHTS, convert_channels, grey_stats, load_dataset
from bissl.data.torchvision_sets import disk_dataset, ensure_registered, photo_channels
from bissl.errors import ConfigError

SIZE = 8


def grey_folder(root: Path, *, colour_file: bool = False, classes: int = 2, per_class: int = 3) -> str:
    """train/ and test/ of grey PNGs in three PIL modes (L, I;16, 1); optionally one RGB file in test/."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                level = 40 + 60 * c + 10 * i
                pixels = np.clip(level + rng.integers(-8, 8, (SIZE, SIZE)), 0, 255).astype(np.uint8)
                if i % 3 == 1:
                    Image.fromarray(pixels.astype(np.uint16) * 257).save(folder / f"{i}.png")
                elif i % 3 == 2:
                    Image.fromarray(pixels).convert("1").save(folder / f"{i}.png")
                else:
                    Image.fromarray(pixels).save(folder / f"{i}.png")
    if colour_file:
        Image.new("RGB", (SIZE, SIZE), (200, 10, 10)).save(root / "test" / "class0" / "colour.png")
    name = f"folder:{root}"
    ensure_registered(name)
    return name


def test_grey_folder_loads_as_one_channel_and_16_bit_is_scaled(tmp_path: Path) -> None:
    name = grey_folder(tmp_path / "grey")
    modes = {Image.open(p).mode for p in (tmp_path / "grey").rglob("*.png")}
    assert modes == {"L", "I;16", "1"}
    assert photo_channels(name) == 1
    train = load_dataset(name, "train", image_size=SIZE)
    test = load_dataset(name, "test", image_size=SIZE)
    assert train.images.shape == (6, 1, SIZE, SIZE) and test.channels == 1
    assert train.mean == grey_stats(IMAGENET_MEAN) and train.std == grey_stats(IMAGENET_STD)
    sixteen_bit = tmp_path / "grey" / "train" / "class1" / "1.png"
    expected = np.asarray(Image.open(sixteen_bit), dtype=np.float64) / 257.0
    position = [
        i for i, f in enumerate(sorted((tmp_path / "grey" / "train").rglob("*.png"))) if f == sixteen_bit
    ]
    assert position == [4]
    assert np.abs(train.images[4, 0].numpy() - expected).max() <= 1.0
    # Not clipped to 255, as PIL's own conversion of 16-bit grey would do.
    assert 100 < float(train.images[4].float().mean()) < 160


def test_one_colour_image_makes_the_folder_rgb(tmp_path: Path) -> None:
    name = grey_folder(tmp_path / "mixed", colour_file=True)
    assert photo_channels(name) == 3
    assert load_dataset(name, "train", image_size=SIZE).images.shape[1] == 3
    assert image_channels([]) == 3


def test_channels_knob_forces_rgb_or_grey(tmp_path: Path) -> None:
    grey = grey_folder(tmp_path / "grey")
    as_rgb = load_dataset(grey, "train", image_size=SIZE, channels=3)
    native = load_dataset(grey, "train", image_size=SIZE)
    assert as_rgb.images.shape[1] == 3 and torch.equal(as_rgb.images, native.images.expand(-1, 3, -1, -1))
    assert as_rgb.mean == native.mean * 3
    mixed = grey_folder(tmp_path / "mixed", colour_file=True)
    colour = load_dataset(mixed, "test", image_size=SIZE)
    as_grey = load_dataset(mixed, "test", image_size=SIZE, channels=1)
    assert as_grey.images.shape[1] == 1
    pil_grey = np.asarray(Image.new("RGB", (1, 1), (200, 10, 10)).convert("L"))[0, 0]
    red = [
        i for i in range(len(colour)) if colour.images[i, 0, 0, 0] == 200 and colour.images[i, 1, 0, 0] == 10
    ]
    assert len(red) == 1 and abs(int(as_grey.images[red[0], 0, 0, 0]) - int(pil_grey)) <= 1


def test_convert_channels_of_in_memory_sets() -> None:
    rgb = synthetic_dataset(6, 2, 3, 4, seed=0)
    grey = convert_channels(rgb, 1)
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    expected = (rgb.images.float() * weights).sum(1, keepdim=True).round()
    assert torch.equal(grey.images, expected.to(torch.uint8))
    assert grey.mean == pytest.approx((sum(w * m for w, m in zip(LUMA_WEIGHTS, rgb.mean)),))
    back = convert_channels(grey, 3)
    assert back.images.shape == (6, 3, 4, 4) and torch.equal(back.images[:, 1], grey.images[:, 0])
    assert convert_channels(rgb, 3) is rgb
    one = load_dataset("synthetic", "train", channels=3)
    assert one.channels == 3 and len(one.mean) == 3


def test_grey_folder_read_from_disk_streams_one_channel_views(tmp_path: Path) -> None:
    name = grey_folder(tmp_path / "grey")
    files = disk_dataset(name, "train")
    assert files.channels == 1 and len(files.mean) == 1
    stream = LoaderStream(files, 2, image_size=SIZE, mode="two-view", seed=0)
    views, _ = next(stream)
    assert views.shape == (2, 2, 1, SIZE, SIZE) and views.dtype == torch.uint8
    assert disk_dataset(name, "train", channels=3).channels == 3
    with pytest.raises(Exception, match="1 or 3 channels"):
        DiskDataset(files.files, files.labels, 2, channels=2)


def test_channels_config_values(tmp_path: Path) -> None:
    assert load_config(None, ["data.channels=1"]).data.channels == 1
    assert load_config(None, []).data.channels == "auto"
    for bad in ("2", "rgb", "true"):
        with pytest.raises(ConfigError, match=r"data\.channels"):
            load_config(None, [f"data.channels={bad}"])
