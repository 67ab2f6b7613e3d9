"""Pretext pretraining: LARS (or AdamW, ``pretrain.optimizer``), per-step warm-up + cosine, optional clipping and a k-NN monitor, run as a
resumable stage loop (``train/loop.py``: atomic checkpoints, exact resume, clean stops, non-finite guard)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bissl import distributed
from bissl.config import Config
from bissl.data.registry import TensorDataset
from bissl.eval import extract_features, knn_accuracy
from bissl.optim import clip_grad_norm, make_optimizer, set_lr, warmup_cosine
from bissl.precision import autocast, channels_last
from bissl.runtime import GracefulStop, RunDir, resolve_device, say, seed_everything
from bissl.train.checkpoint_formats import load_pretext, save_backbone, save_pretext
from bissl.train.data_sources import (
    load_data,
    load_pretext_source,
    make_downstream_augment,
    make_two_view,
    pretext_stream,
)
from bissl.train.loop import StageLoop, optimizer_part
from bissl.train.model_factory import architecture, make_pretext


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


def pretrain(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> dict[str, Any]:
    """Train the pretext task; writes checkpoints/pretext.pt and backbone.pt and returns the summary."""
    stop = stop or GracefulStop()
    settings = config.pretrain
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data = load_pretext_source(config)
    task = (
        load_pretext(settings.init_checkpoint, config, data.channels)
        if settings.init_checkpoint is not None
        else make_pretext(config, data.channels)
    )
    if config.model.sync_bn and distributed.is_distributed():
        distributed.convert_sync_batchnorm(task)
    task = channels_last(task.to(device), config.channels_last)
    distributed.reseed_per_rank(config.seed)
    augment = make_two_view(config, data).to(device)
    named = [(n, p) for n, p in task.named_parameters() if not n.startswith("target.")]
    optimizer = make_optimizer(
        settings.optimizer,
        named,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        exclude_bias_norm=settings.lars_exclude_bias_norm,
        lars_eta=settings.lars_eta,
    )
    world = distributed.world_size()
    stream = pretext_stream(
        config,
        data,
        settings.batch_size,
        seed=config.seed,
        device=device,
        rank=distributed.rank(),
        world_size=world,
    )
    steps_per_epoch = max(1, len(data) // (settings.batch_size * world))
    total_steps = settings.steps if settings.steps is not None else settings.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(settings.warmup_epochs * steps_per_epoch))
    loop = StageLoop(
        "pretrain",
        total_steps,
        checkpoint=run.last_checkpoint,
        stage="pretrain-state",
        architecture=architecture(config, data.channels),
        parts={"task": task, "optimizer": optimizer_part(optimizer, "pretrain.optimizer"), "stream": stream},
        max_nonfinite=config.max_nonfinite,
        every=settings.checkpoint_every,
        stop=stop,
        resume=resume,
    )
    knn_data = _knn_sets(config) if settings.knn_every > 0 else None
    model = _wrap(task, device)
    last_loss = float("nan")

    def train_step(step: int) -> dict[str, str]:
        nonlocal last_loss
        lr = warmup_cosine(
            step, total_steps, warmup_steps, settings.lr, settings.lr * settings.final_lr_ratio
        )
        set_lr(optimizer, lr)
        images, _ = next(stream)
        view1, view2 = augment(images)
        with autocast(device, config.precision):
            loss = model(view1, view2)
        optimizer.zero_grad(set_to_none=True)
        if loop.finite(loss.detach(), "pretext loss", across_ranks=True):
            loss.backward()
            grad_norm = clip_grad_norm((p for _, p in named), settings.clip_grad)
            if loop.finite(grad_norm, "gradient norm"):
                optimizer.step()
                task.after_step((step + 1) / total_steps)
                last_loss = float(loss.detach())
        record: dict[str, Any] = {}
        if (step + 1) % settings.log_every == 0 or step + 1 == total_steps:
            loss_mean = distributed.average_scalar(last_loss)
            record = {"stage": "pretrain", "step": step + 1, "loss": loss_mean, "lr": lr}
        if knn_data is not None and (step + 1) % settings.knn_every == 0:
            record.update(step=step + 1, stage="pretrain", knn_top1=_knn(config, task, knn_data, device))
            task.train()
        if record:
            run.log(record)
        return {"loss": f"{last_loss:.3f}", "lr": f"{lr:.3g}"}

    task.train()
    loop.run(train_step)
    pretext_path = run.checkpoints / "pretext.pt"
    if distributed.is_main():
        save_pretext(pretext_path, task, config, data.channels, steps=total_steps)
        save_backbone(run.path / "backbone.pt", task.backbone, config, data.channels, stage="pretrain")
    distributed.barrier()
    images = (total_steps - loop.start) * settings.batch_size * world
    summary: dict[str, Any] = {
        "stage": "pretrain",
        "steps": total_steps,
        "final_loss": last_loss,
        "seconds": loop.seconds,
        "images_per_second": images / max(loop.seconds, 1e-9),
        "skipped_steps": loop.skipped,
        "pretext_checkpoint": str(pretext_path),
    }
    if knn_data is not None or settings.knn_every == 0:
        summary["knn_top1"] = _knn(config, task, knn_data or _knn_sets(config), device)
    run.write_summary(summary)
    say(f"pretrain done: loss {last_loss:.4f}, k-NN top-1 {summary.get('knn_top1', float('nan')):.2f}%")
    return summary


def _wrap(task: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around the task in a distributed run (BYOL's target has no gradients and is excluded)."""
    if not distributed.is_distributed():
        return task
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(task, device_ids=ids, find_unused_parameters=False)


def _knn_sets(config: Config) -> tuple[Any, Any] | None:
    """Memory bank and queries for the k-NN monitor: the pretext set's own labelled train and test splits."""
    try:
        memory = load_data(config, "pretext", "train")
        queries = load_data(config, "pretext", "test")
    except Exception:
        return None
    if memory.multilabel:
        return None
    return memory, queries


def _knn(config: Config, task: torch.nn.Module, sets: tuple[Any, Any] | None, device: torch.device) -> float:
    if sets is None:
        return float("nan")
    memory, queries = sets
    normalize = make_downstream_augment(config, memory).to(device)
    return knn_monitor(
        task.backbone,  # type: ignore[arg-type]
        memory,
        queries,
        lambda x: normalize(x, train=False),
        k=config.pretrain.knn_k,
        temperature=config.pretrain.knn_temperature,
        device=device,
    )
