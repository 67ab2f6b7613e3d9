"""Reading data from a config: the pretext and downstream datasets (in memory or from disk), the pretext
batch stream, and the two-view and downstream augmentations."""

from __future__ import annotations

from pathlib import Path

import torch

from bissl.config import Config
from bissl.data import torchvision_sets
from bissl.data.augment import DownstreamAugment, TwoViewAugment, ViewOptions
from bissl.data.folder_stream import CropOptions, DiskDataset, LoaderStream
from bissl.data.registry import TensorDataset, load_dataset
from bissl.data.stream import BatchStream
from bissl.downstream import DownstreamTask
from bissl.errors import DataError


def load_data(config: Config, which: str, split: str) -> TensorDataset:
    """The pretext (``which="pretext"``) or downstream dataset's split, as configured."""
    data = config.data
    name = data.pretext if which == "pretext" else data.downstream
    limit = data.pretext_limit if which == "pretext" else data.downstream_limit
    torchvision_sets.ensure_registered(name)
    if which == "pretext" and pretext_on_disk(config):
        raise DataError(
            f"pretext set {name!r} is read from disk batch by batch at this size (data.in_memory="
            f"{data.in_memory}); it is not loaded whole here (data.in_memory=true forces it into memory)"
        )
    return load_dataset(
        name,
        split,
        root=data.root,
        download=data.download,
        image_size=data.image_size,
        limit=limit if split == "train" else None,
        seed=data.split_seed,
        channels=forced_channels(config),
    )


def forced_channels(config: Config) -> int | None:
    """The channel count ``data.channels`` forces on every dataset, or None for each dataset's own."""
    channels = config.data.channels
    return None if channels == "auto" else int(channels)


def pretext_on_disk(config: Config) -> bool:
    """Whether the pretext set is read per batch from disk (data.in_memory, or by size when "auto")."""
    data = config.data
    return torchvision_sets.reads_from_disk(
        data.pretext, data.image_size, data.in_memory, data.root, data.download
    )


def load_pretext_source(config: Config) -> TensorDataset | DiskDataset:
    """The pretext train split: decoded in memory, or image files read per batch when too large for memory."""
    data = config.data
    torchvision_sets.ensure_registered(data.pretext)
    if not pretext_on_disk(config):
        return load_data(config, "pretext", "train")
    return torchvision_sets.disk_dataset(
        data.pretext,
        "train",
        root=data.root,
        download=data.download,
        limit=data.pretext_limit,
        seed=data.split_seed,
        channels=forced_channels(config),
    )


def pretext_stream(
    config: Config,
    data: TensorDataset | DiskDataset,
    batch_size: int,
    *,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> BatchStream | LoaderStream:
    """Pretext batches: from memory, or from loader workers that also make both views' crops and flips (the
    two-view augmentation then does the photometric part on the device)."""
    if isinstance(data, TensorDataset):
        return BatchStream(data, batch_size, seed=seed, device=device, rank=rank, world_size=world_size)
    aug = config.augment
    options = ViewOptions(
        crop_scale=_pair(aug.crop_scale), crop_ratio=_pair(aug.crop_ratio), reference_crop=aug.reference_crop
    )
    scale, ratio = options.crop_range
    return LoaderStream(
        data,
        batch_size,
        image_size=config.data.image_size,
        mode="two-view",
        crop=CropOptions(scale=scale, ratio=ratio, flip_p=aug.flip_p),
        seed=seed,
        device=device,
        rank=rank,
        world_size=world_size,
        num_workers=config.data.num_workers,
    )


def _pair(values: list[float]) -> tuple[float, float]:
    return (values[0], values[1])


def make_two_view(config: Config, dataset: TensorDataset | DiskDataset) -> TwoViewAugment:
    """The SPEC §5 two-view augmentation for ``dataset``'s images."""
    aug = config.augment
    return TwoViewAugment(
        image_size=config.data.image_size,
        channels=dataset.channels,
        mean=dataset.mean,
        std=dataset.std,
        crop_scale=_pair(aug.crop_scale),
        crop_ratio=_pair(aug.crop_ratio),
        reference_crop=aug.reference_crop,
        jitter=(aug.jitter[0], aug.jitter[1], aug.jitter[2], aug.jitter[3]),
        jitter_p=aug.jitter_p,
        grayscale_p=aug.grayscale_p,
        blur_p=_pair(aug.blur_p),
        solarize_p=_pair(aug.solarize_p),
        flip_p=aug.flip_p,
    )


def make_downstream_augment(config: Config, dataset: TensorDataset) -> DownstreamAugment:
    """Downstream train (resized crop + flip) / eval (resize + centre crop) transforms."""
    return DownstreamAugment(
        image_size=config.data.image_size,
        channels=dataset.channels,
        mean=dataset.mean,
        std=dataset.std,
        crop_scale=_pair(config.augment.downstream_crop_scale),
    )


def downstream_data(config: Config, run_path: Path | None) -> tuple[dict[str, TensorDataset], DownstreamTask]:
    """Downstream train/val/test: the dataset's own validation split when it has one, else the train split
    divided by a seeded (stratified) split that is written to the run folder and reused; its own test split."""
    from bissl.data.splits import split_dataset

    full = load_data(config, "downstream", "train")
    if torchvision_sets.has_official_val(config.data.downstream):
        train, val = full, load_data(config, "downstream", "val")
    else:
        name = config.data.downstream.replace("/", "_").replace(":", "_")
        split_file = run_path / "splits" / f"{name}.json" if run_path is not None else None
        train, val = split_dataset(full, config.data.val_fraction, config.data.split_seed, path=split_file)
    test = load_data(config, "downstream", "test")
    task = DownstreamTask(num_classes=full.num_classes, multilabel=full.multilabel)
    return {"train": train, "val": val, "test": test}, task
