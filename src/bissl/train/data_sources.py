"""Reading data from a config: the pretext and downstream datasets (in memory or from disk), the pretext
batch stream, and the two-view and downstream augmentations. Datasets are looked up in the registry
(:mod:`bissl.data.registry`) only; each function here lists a dataset's folders once (``keep_listings``), and
inside a run (the command line's) they share one listing."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from bissl.config import Config
from bissl.data import registry
from bissl.data.augment import DownstreamAugment, TwoViewAugment, ViewOptions
from bissl.data.folder_stream import CropOptions, DiskDataset, LoaderStream
from bissl.data.registry import TensorDataset, load_dataset
from bissl.data.stream import BatchStream
from bissl.downstream import DownstreamTask
from bissl.errors import DataError


@registry.keep_listings()
def load_data(config: Config, which: str, split: str) -> TensorDataset:
    """The pretext (``which="pretext"``) or downstream dataset's split, as configured."""
    data = config.data
    name = data.pretext if which == "pretext" else data.downstream
    limit = data.pretext_limit if which == "pretext" else data.downstream_limit
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
    return registry.reads_from_disk(data.pretext, data.image_size, data.in_memory, data.root, data.download)


@registry.keep_listings()
def load_pretext_source(config: Config) -> TensorDataset | DiskDataset:
    """The pretext train split: decoded in memory, or image files read per batch when too large for memory."""
    data = config.data
    if not pretext_on_disk(config):
        return load_data(config, "pretext", "train")
    source: DiskDataset = registry.disk_dataset(
        data.pretext,
        "train",
        root=data.root,
        download=data.download,
        limit=data.pretext_limit,
        seed=data.split_seed,
        channels=forced_channels(config),
    )
    return source


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
    """The two-view augmentation (docs/data.md) for ``dataset``'s images."""
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


@registry.keep_listings()
def check_downstream(config: Config) -> None:
    """Refuse, with one line, a downstream set that cannot train and score a classifier: fewer than 2 classes,
    test images of a class without training images (image folders), or a ``data.downstream_limit`` that keeps
    fewer training images than classes or no validation image. Photo sets are checked from their file lists
    (nothing is decoded), so this is cheap enough to call before any training starts."""
    data = config.data
    name = data.downstream
    info = registry.dataset_info(name)
    if not info.photos:
        dataset = load_dataset(name, "train", root=data.root, download=data.download)
        _check_counts(config, dataset.num_classes, dataset.multilabel, len(dataset))
        return
    listing = registry.list_images(name, "train", data.root, data.download)
    for split in info.splits:
        if split != "train":
            registry.list_images(name, split, data.root, data.download)
    if not listing.multilabel and info.fixed_root is not None:
        present = sorted({Path(file).parent.name for file in listing.files})
        if len(present) < 2:
            train = Path(listing.files[0]).parent.parent
            raise DataError(
                f"data.downstream={name} has {len(present)} class folder with images in {train} "
                f"({', '.join(present)}); a classification folder needs at least 2 class subfolders "
                f"({train.name}/<class>/); add another class or choose another data.downstream"
            )
    classes = listing.num_classes if listing.multilabel else int(torch.unique(listing.labels).numel())
    _check_counts(config, classes, listing.multilabel, len(listing.files))


def _check_counts(config: Config, classes: int, multilabel: bool, size: int) -> None:
    """The class and ``data.downstream_limit`` checks of :func:`check_downstream` for a train split of ``size``
    images (after the limit when it is already applied) and ``classes`` classes."""
    data = config.data
    name = data.downstream
    if classes < 2 and not multilabel:
        raise DataError(
            f"data.downstream={name} has {classes} class in its training split; a downstream "
            "classification set needs at least 2; choose another data.downstream"
        )
    limit = data.downstream_limit  # at least 1 when set: the config's range guarantees it
    if limit is None or size < limit:
        return  # no limit, or one that keeps every image
    official_val = registry.has_official_val(name)
    fraction = 0.0 if official_val else data.val_fraction

    def fits(count: int) -> bool:
        validate = round(count * fraction)
        return count - validate >= classes and (validate >= 1 or fraction == 0.0)

    if fits(limit):
        return
    minimum = next(count for count in itertools.count(classes) if fits(count))  # val_fraction < 1: it ends
    if official_val:
        split = f"keeps {limit} training images of {name}, fewer than its {classes} classes"
    else:
        validate = round(limit * fraction)
        short = [f"fewer training images than its {classes} classes"] if limit - validate < classes else []
        short += ["no validation image"] if validate < 1 else []
        split = (
            f"keeps {limit} training images of {name}: {limit - validate} to train and {validate} to validate "
            f"(data.val_fraction={data.val_fraction}), {' and '.join(short)}"
        )
    raise DataError(
        f"data.downstream_limit={limit} {split}; set data.downstream_limit to at least {minimum}, "
        "or null for all images"
    )


@registry.keep_listings()
def downstream_data(config: Config, run_path: Path | None) -> tuple[dict[str, TensorDataset], DownstreamTask]:
    """Downstream train/val/test: the dataset's own validation split when it has one, else the train split
    divided by a seeded (stratified) split that is written to the run folder and reused; its own test split.
    Photo sets are checked (:func:`check_downstream`) before anything is decoded or written; the check and the
    loads share one listing of the set's folders."""
    from bissl.data.splits import split_dataset

    photos = registry.is_photo_set(config.data.downstream)
    if photos:
        check_downstream(config)
    full = load_data(config, "downstream", "train")
    if not photos:
        _check_counts(config, full.num_classes, full.multilabel, len(full))
    if registry.has_official_val(config.data.downstream):
        train, val = full, load_data(config, "downstream", "val")
    else:
        name = config.data.downstream.replace("/", "_").replace(":", "_")
        split_file = run_path / "splits" / f"{name}.json" if run_path is not None else None
        train, val = split_dataset(full, config.data.val_fraction, config.data.split_seed, path=split_file)
    test = load_data(config, "downstream", "test")
    task = DownstreamTask(num_classes=full.num_classes, multilabel=full.multilabel)
    return {"train": train, "val": val, "test": test}, task
