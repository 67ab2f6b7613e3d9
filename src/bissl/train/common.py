"""Pieces every stage shares: building the backbone and augmentations from a config, saving and loading
backbones and pretext checkpoints, and the k-NN monitor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bissl.checkpoint import check_architecture, load_checkpoint, make_meta, save_checkpoint
from bissl.config import Config
from bissl.data import torchvision_sets
from bissl.data.augment import DownstreamAugment, TwoViewAugment, ViewOptions
from bissl.data.folder_stream import CropOptions, DiskDataset, LoaderStream
from bissl.data.registry import TensorDataset, load_dataset
from bissl.data.stream import BatchStream
from bissl.downstream import DownstreamTask
from bissl.errors import CheckpointError, DataError
from bissl.eval import extract_features, knn_accuracy
from bissl.models import build_backbone, feature_dim
from bissl.pretext import PretextTask, build_pretext


def architecture(config: Config, channels: int) -> dict[str, Any]:
    """What must match for weights to load: backbone name, stem, width, blocks, input channels."""
    model = config.model
    arch: dict[str, Any] = {"backbone": model.backbone, "in_channels": channels}
    if model.backbone == "small_resnet":
        arch.update(width=model.width, blocks=list(model.blocks))
    else:
        arch.update(stem=model.stem)
    return arch


def make_backbone(config: Config, channels: int) -> nn.Module:
    """The configured backbone for images with ``channels`` channels."""
    model = config.model
    return build_backbone(
        model.backbone, in_channels=channels, stem=model.stem, width=model.width, blocks=tuple(model.blocks)
    )


def make_pretext(config: Config, channels: int) -> PretextTask:
    """A fresh pretext task (backbone + head) for the configured method."""
    backbone = make_backbone(config, channels)
    return build_pretext(config.pretext, backbone, feature_dim(backbone))


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


def save_pretext(path: Path, task: PretextTask, config: Config, channels: int, **extra: Any) -> Path:
    """The pretext checkpoint: whole task (backbone, head, BYOL target) plus the plain backbone."""
    state = {
        "meta": make_meta("pretrain", architecture(config, channels), method=config.pretext.method, **extra),
        "task": task.state_dict(),
        "backbone": task.backbone.state_dict(),
    }
    return save_checkpoint(path, state)


def load_pretext(path: str | Path, config: Config, channels: int) -> PretextTask:
    """A pretext task restored from a pretext checkpoint (refused if the architecture or method differs)."""
    state = load_checkpoint(path, expect_stage="pretrain")
    check_architecture(state, architecture(config, channels), path)
    method = state["meta"].get("method")
    if method != config.pretext.method:
        raise CheckpointError(
            f"checkpoint '{path}' was trained with pretext.method={method!r} but the config says "
            f"{config.pretext.method!r}; set pretext.method={method}"
        )
    task = make_pretext(config, channels)
    task.load_state_dict(state["task"])
    return task


def save_backbone(path: Path, backbone: nn.Module, config: Config, channels: int, stage: str) -> Path:
    """A plain backbone state dict (loads with ``load_state_dict``) and a JSON sidecar naming its origin."""
    save_checkpoint(path, {k: v.detach().cpu() for k, v in backbone.state_dict().items()})
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({"stage": stage, "architecture": architecture(config, channels)}, indent=2))
    return path


def load_backbone_weights(path: str | Path, config: Config, channels: int) -> nn.Module:
    """A backbone from a plain state dict (``save_backbone``) or from a pretext checkpoint."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"backbone checkpoint '{source}' does not exist; check backbone=PATH")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(
            f"backbone checkpoint '{source}' cannot be read; it is truncated or not a checkpoint"
        ) from None
    if isinstance(state, dict) and "meta" in state:
        check_architecture(state, architecture(config, channels), source)
        if "backbone" not in state:
            raise CheckpointError(f"checkpoint '{source}' holds no backbone weights")
        state = state["backbone"]
    else:
        sidecar = source.with_suffix(".json")
        if sidecar.is_file():
            check_architecture(
                {"meta": json.loads(sidecar.read_text())}, architecture(config, channels), source
            )
    backbone = make_backbone(config, channels)
    try:
        backbone.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:150]
        raise CheckpointError(
            f"backbone checkpoint '{source}' does not fit model.{config.model.backbone}: {first}"
        ) from None
    return backbone


def knn_monitor(
    backbone: nn.Module,
    memory: TensorDataset,
    queries: TensorDataset,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    k: int,
    temperature: float,
    device: torch.device,
    batch_size: int = 512,
) -> float:
    """k-NN top-1 (percent) of frozen features: ``memory`` labels vote for ``queries``."""
    memory_features = extract_features(
        backbone, memory.images, batch_size=batch_size, device=device, transform=normalize
    )
    query_features = extract_features(
        backbone, queries.images, batch_size=batch_size, device=device, transform=normalize
    )
    return knn_accuracy(
        memory_features,
        memory.labels,
        query_features,
        queries.labels,
        num_classes=memory.num_classes,
        k=k,
        temperature=temperature,
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
