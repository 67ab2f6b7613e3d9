"""Image files read per sample in DataLoader workers, and an endless resumable stream of their batches.

For sets too large to keep decoded in memory (ImageNet), loader workers decode each image and make the
geometric part of its views at ``image_size`` as uint8: two random resized crops with flips for the SSL views,
one for downstream training, or resize + centre crop. The training device does the rest in batches (the
photometric augmentations and normalisation, see ``TwoViewAugment``), so workers stay cheap.

``LoaderStream`` behaves like :class:`~bissl.data.stream.BatchStream`: the same per-epoch sample order fixed by
(seed, epoch), the same rank sharding, and ``state_dict``/``load_state_dict`` that resume at the exact batch.
Every random crop is drawn from a generator seeded by (seed, epoch, position in the epoch), so a resumed or
re-sharded stream produces the same pixels whatever the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from bissl.data.registry import grey_stats
from bissl.data.stream import check_resumable, epoch_permutation, stream_state
from bissl.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL modes of single-channel images; the 16-bit ones are scaled to 8 bits on decode.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"})
WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
CROP_ATTEMPTS = 10
ViewMode = Literal["two-view", "crop", "center"]
SampleKey = tuple[int, int, int, int]


def image_channels(files: Sequence[str]) -> int:
    """1 when every file is a single-channel image (PIL modes 1, L, LA, I, I;16), else 3. Only headers are read,
    and the scan stops at the first colour image."""
    for path in files:
        with open_image(path) as image:
            if image.mode not in GREY_MODES:
                return 3
    return 1 if files else 3


def as_mode(image: Image.Image, channels: int) -> Image.Image:
    """An opened image as 8-bit grey (``channels=1``) or RGB: 16-bit grey is scaled to 8 bits (PIL's own
    conversion clips it), colour becomes grey by luma, grey becomes RGB by repeating the channel."""
    if image.mode in WIDE_GREY_MODES:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))
    return image.convert("L" if channels == 1 else "RGB")


@dataclass
class DiskDataset:
    """Image files with their labels: (N,) int64, or (N, K) float32 multi-hot when ``multilabel``.

    Images are decoded only when read, as ``channels`` channels (3: RGB, 1: grey); ``mean`` and ``std`` (in
    [0, 1] units) are the normalisation the views get: ImageNet statistics by default, luma-weighted to one
    value each for grey images.
    """

    files: list[str]
    labels: torch.Tensor
    num_classes: int
    multilabel: bool = False
    name: str = "folder"
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)
    channels: int = 3

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(
                f"dataset {self.name!r}: images are decoded with 1 or 3 channels, not {self.channels}"
            )
        if self.channels == 1:
            self.mean, self.std = grey_stats(self.mean), grey_stats(self.std)
        if self.labels.shape[0] != len(self.files):
            raise DataError(
                f"dataset {self.name!r}: {len(self.files)} files but {self.labels.shape[0]} labels"
            )
        if self.multilabel:
            self.labels = self.labels.to(torch.float32)
        else:
            self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> DiskDataset:
        """The samples at ``indices``, with the same name, classes and statistics."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return replace(self, files=[self.files[i] for i in index.tolist()], labels=self.labels[index])


@dataclass(frozen=True)
class CropOptions:
    """Random resized crop ranges (area fraction and aspect ratio) and the horizontal flip probability."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise DataError(f"crop scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise DataError(f"crop aspect ratio must satisfy 0 < low <= high, got {self.ratio}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise DataError(f"flip probability must lie in [0, 1], got {self.flip_p}")


Box = tuple[float, float, float, float]


def random_resized_box(width: int, height: int, options: CropOptions, rng: np.random.Generator) -> Box:
    """(left, top, box width, box height) of a random crop: area fraction uniform in ``scale``, aspect ratio
    log-uniform in ``ratio``; after ten misses, the largest centred box whose ratio is clamped to the range."""
    area = width * height
    log_low, log_high = math.log(options.ratio[0]), math.log(options.ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target = area * rng.uniform(options.scale[0], options.scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        box_width = round(math.sqrt(target * aspect))
        box_height = round(math.sqrt(target / aspect))
        if 0 < box_width <= width and 0 < box_height <= height:
            left = int(rng.integers(0, width - box_width + 1))
            top = int(rng.integers(0, height - box_height + 1))
            return float(left), float(top), float(box_width), float(box_height)
    image_ratio = width / height
    if image_ratio < options.ratio[0]:
        box_width, box_height = width, round(width / options.ratio[0])
    elif image_ratio > options.ratio[1]:
        box_width, box_height = round(height * options.ratio[1]), height
    else:
        box_width, box_height = width, height
    return (
        float((width - box_width) // 2),
        float((height - box_height) // 2),
        float(box_width),
        float(box_height),
    )


def center_box(width: int, height: int) -> Box:
    """The largest centred square: what resizing the shorter side and cropping the centre keeps."""
    side = min(width, height)
    return float((width - side) // 2), float((height - side) // 2), float(side), float(side)


@contextmanager
def open_image(path: str) -> Iterator[Image.Image]:
    """An image file opened lazily (header only); a damaged or unreadable file raises DataError naming it."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot read image {path} ({error}); the file is damaged, replace or remove it"
        ) from None


def resample_boxes(
    image: Image.Image, image_size: int, boxes: Sequence[Box], flips: Sequence[bool], channels: int = 3
) -> torch.Tensor:
    """Each box of an opened image resampled to ``image_size`` square (bilinear, antialiased), flipped where
    asked, as uint8 (V, C, S, S) with ``channels`` channels. JPEGs are decoded at a reduced scale when every box
    stays at least twice ``image_size``, which makes decoding of large photos several times cheaper."""
    width, height = image.size
    shrink = min(min(box[2], box[3]) for box in boxes) / image_size
    if image.format == "JPEG" and shrink >= 2.0:
        image.draft("L" if channels == 1 else "RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
    scale_x, scale_y = image.size[0] / width, image.size[1] / height
    decoded = as_mode(image, channels)
    views = []
    for (left, top, box_width, box_height), flip in zip(boxes, flips, strict=True):
        scaled = (
            left * scale_x,
            top * scale_y,
            min((left + box_width) * scale_x, decoded.width),
            min((top + box_height) * scale_y, decoded.height),
        )
        view = decoded.resize((image_size, image_size), Image.Resampling.BILINEAR, box=scaled)
        if flip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(view, dtype=np.uint8).reshape(image_size, image_size, channels)
        views.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
    return torch.stack(views)


class ViewReader(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """What a loader worker does for one sample key (index, seed, epoch, slot): its views and its label.

    ``"two-view"`` gives (2, C, S, S), ``"crop"`` and ``"center"`` give (C, S, S) with the dataset's channels;
    the random crops come from a generator seeded by (seed, epoch, slot) alone.
    """

    def __init__(
        self, dataset: DiskDataset, image_size: int, mode: ViewMode, options: CropOptions | None = None
    ) -> None:
        if mode not in ("two-view", "crop", "center"):
            raise DataError(f"view mode {mode!r} is not one of two-view, crop, center")
        self.dataset = dataset
        self.image_size = image_size
        self.mode = mode
        self.options = options or CropOptions()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed, epoch, slot = key
        path = self.dataset.files[index]
        count = 2 if self.mode == "two-view" else 1
        with open_image(path) as image:
            width, height = image.size
            if self.mode == "center":
                boxes, flips = [center_box(width, height)], [False]
            else:
                rng = np.random.default_rng([seed, epoch, slot])
                boxes = [random_resized_box(width, height, self.options, rng) for _ in range(count)]
                flips = [bool(rng.random() < self.options.flip_p) for _ in range(count)]
            views = resample_boxes(image, self.image_size, boxes, flips, self.dataset.channels)
        return (views if count == 2 else views[0]), self.dataset.labels[index]


class EpochBatchKeys(torch.utils.data.Sampler[list[SampleKey]]):
    """Endless batches of sample keys for one rank, epoch after epoch, from ``start`` = (epoch, batch)."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.global_batch_size = batch_size * world_size
        self.batches_per_epoch = num_samples // self.global_batch_size
        self.start = (0, 0)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch, position = self.start
        while True:
            order = epoch_permutation(self.num_samples, self.seed, epoch).tolist()
            for batch in range(position, self.batches_per_epoch):
                first = batch * self.global_batch_size + self.rank * self.batch_size
                yield [
                    (order[slot], self.seed, epoch, slot) for slot in range(first, first + self.batch_size)
                ]
            epoch, position = epoch + 1, 0


def _limit_threads(worker_id: int) -> None:
    """One intra-op thread per loader worker: the workers are the parallelism."""
    torch.set_num_threads(1)


class LoaderStream:
    """An endless stream of (uint8 views on ``device``, labels) read from files by DataLoader workers.

    Same order, sharding and resume semantics as ``BatchStream``; ``mode`` picks the views (see
    ``ViewReader``): images are (N, 2, C, S, S) in ``"two-view"`` mode, (N, C, S, S) otherwise. Workers are
    persistent and batches land in pinned memory when ``device`` is a GPU.
    """

    def __init__(
        self,
        dataset: DiskDataset,
        batch_size: int,
        *,
        image_size: int,
        mode: ViewMode = "two-view",
        crop: CropOptions | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        prefetch_factor: int = 2,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in a world of size {world_size}")
        if len(dataset) < batch_size * world_size:
            raise DataError(
                f"dataset {dataset.name!r} has {len(dataset)} samples, fewer than one batch of "
                f"{batch_size * world_size} ({batch_size} x {world_size} ranks); lower the batch size"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.world_size = world_size
        self.device = torch.device(device)
        self.num_workers = max(0, num_workers)
        self.prefetch_factor = prefetch_factor
        self.reader = ViewReader(dataset, image_size, mode, crop)
        self.keys = EpochBatchKeys(len(dataset), batch_size, rank, world_size, seed)
        self.batches_per_epoch = self.keys.batches_per_epoch
        self.epoch = 0
        self.position = 0
        self._loader: torch.utils.data.DataLoader[Any] | None = None
        self._iterator: Iterator[Any] | None = None

    @property
    def seed(self) -> int:
        return self.keys.seed

    def _make_loader(self) -> torch.utils.data.DataLoader[Any]:
        workers = self.num_workers
        return torch.utils.data.DataLoader(
            self.reader,
            batch_sampler=self.keys,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            worker_init_fn=_limit_threads if workers > 0 else None,
        )

    def __iter__(self) -> LoaderStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        if self._iterator is None:
            self.keys.start = (self.epoch, self.position)
            if self._loader is None:
                self._loader = self._make_loader()
            self._iterator = iter(self._loader)
        images, labels = next(self._iterator)
        self.position += 1
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands, in the same form as ``BatchStream.state_dict``."""
        return stream_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; the dataset, batch size and world size must be the same."""
        check_resumable(
            state, num_samples=len(self.dataset), batch_size=self.batch_size, world_size=self.world_size
        )
        self.keys.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._iterator = None

    def close(self) -> None:
        """Stop the loader workers (a later ``next`` starts them again)."""
        self._iterator = None
        self._loader = None


def decode_all(
    dataset: DiskDataset, image_size: int, *, num_workers: int = 0, batch_size: int = 256
) -> torch.Tensor:
    """Every image resized (shorter side) and centre-cropped to ``image_size`` square, uint8 (N, C, S, S)."""
    from bissl.runtime import progress

    reader = ViewReader(dataset, image_size, "center")
    keys = [(index, 0, 0, index) for index in range(len(dataset))]
    batches = [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]
    loader = torch.utils.data.DataLoader(
        reader,
        batch_sampler=batches,
        num_workers=num_workers,
        worker_init_fn=_limit_threads if num_workers > 0 else None,
    )
    out = torch.empty((len(dataset), dataset.channels, image_size, image_size), dtype=torch.uint8)
    bar = progress(len(dataset), f"decode {dataset.name}")
    start = 0
    for images, _ in loader:
        out[start : start + images.shape[0]] = images
        start += images.shape[0]
        bar.update(images.shape[0])
    bar.close()
    return out


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropOptions",
    "DiskDataset",
    "EpochBatchKeys",
    "LoaderStream",
    "ViewReader",
    "as_mode",
    "center_box",
    "decode_all",
    "image_channels",
    "open_image",
    "random_resized_box",
    "resample_boxes",
]
