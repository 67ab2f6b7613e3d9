"""The supervised steps shared by head warm-up and fine-tuning: SGD with momentum (or AdamW) over an endless, resumable
batch stream, evaluation at epoch ends and best-on-validation tracking, run as a resumable stage loop
(``train/loop.py``: checkpoints every ``checkpoint_every`` epochs, exact resume, clean stops)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bissl import distributed
from bissl.data.augment import DownstreamAugment
from bissl.data.registry import TensorDataset
from bissl.data.stream import BatchStream
from bissl.downstream import DownstreamTask
from bissl.models.batchnorm import recompute_batchnorm_statistics
from bissl.optim import clip_grad_norm, make_optimizer, set_lr, warmup_cosine
from bissl.precision import autocast, channels_last
from bissl.runtime import GracefulStop, RunDir
from bissl.train.loop import Part, StageLoop, optimizer_part


@torch.no_grad()
def evaluate_classifier(
    backbone: nn.Module,
    head: nn.Module,
    dataset: TensorDataset,
    augment: DownstreamAugment,
    task: DownstreamTask,
    device: torch.device,
    batch_size: int = 512,
) -> dict[str, float]:
    """The task's metrics (and mean loss) of backbone + head on a whole split, in eval mode."""
    modes = [(m, m.training) for m in (*backbone.modules(), *head.modules())]
    backbone.eval()
    head.eval()
    logits: list[torch.Tensor] = []
    try:
        for start in range(0, len(dataset), batch_size):
            images = dataset.images[start : start + batch_size].to(device)
            logits.append(head(backbone(augment(images, train=False))).float().cpu())
    finally:
        for module, was_training in modes:
            module.training = was_training
    all_logits = torch.cat(logits)
    metrics = task.metrics(all_logits, dataset.labels)
    metrics["loss"] = float(task.loss(all_logits, dataset.labels))
    return metrics


def refresh_batchnorm(
    backbone: nn.Module,
    dataset: TensorDataset,
    augment: DownstreamAugment,
    device: torch.device,
    batch_size: int = 512,
) -> int:
    """Recompute the backbone's BatchNorm running statistics at its current weights from one pass over
    ``dataset`` with the evaluation transform (no random draws, so no generator moves); returns images seen."""

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(dataset), batch_size):
            yield augment(dataset.images[start : start + batch_size].to(device), train=False)

    return recompute_batchnorm_statistics(backbone, batches())


@dataclass
class ClassifierSettings:
    """What differs between warm-up and fine-tuning."""

    stage: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float = 0.9
    optimizer: str = "sgd"
    """sgd or adamw (``bissl.optim.make_optimizer``; the config key is ``<stage>.optimizer``)."""
    cosine: bool = True
    final_lr_ratio: float = 0.0
    train_backbone: bool = True
    backbone_train_mode: bool = True
    eval_every: int = 1
    checkpoint_every: int = 1
    seed: int = 0
    max_nonfinite: int = 5
    clip_grad: float | None = None
    sync_bn: bool = False
    precision: str = "fp32"
    channels_last: bool = False


def fit_classifier(
    backbone: nn.Module,
    head: nn.Module,
    data: dict[str, TensorDataset],
    augment: DownstreamAugment,
    task: DownstreamTask,
    settings: ClassifierSettings,
    run: RunDir | None,
    device: torch.device,
    *,
    stop: GracefulStop | None = None,
    resume: bool = True,
    checkpoint_name: str = "last.pt",
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``head`` (and ``backbone`` if ``train_backbone``) on ``data["train"]``.

    Evaluates on ``data["val"]`` (and ``data["test"]`` when present) every ``eval_every`` epochs and at the
    end; returns last and best-on-validation metrics. Resumes exactly from ``run``'s checkpoint.
    """
    stop = stop or GracefulStop()
    if settings.sync_bn and distributed.is_distributed():
        distributed.convert_sync_batchnorm(backbone)
    distributed.reseed_per_rank(settings.seed)
    channels_last(backbone, settings.channels_last)
    named = [(f"head.{n}", p) for n, p in head.named_parameters()]
    if settings.train_backbone:
        named = [*((f"backbone.{n}", p) for n, p in backbone.named_parameters()), *named]
    else:
        backbone.requires_grad_(False)
    parameters = [p for _, p in named]
    optimizer = make_optimizer(
        settings.optimizer,
        named,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    world = distributed.world_size()
    train = data["train"]
    stream = BatchStream(
        train,
        settings.batch_size,
        seed=settings.seed,
        device=device,
        rank=distributed.rank(),
        world_size=world,
    )
    steps_per_epoch = max(1, len(train) // (settings.batch_size * world))
    total_steps = settings.epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    loop = StageLoop(
        settings.stage,
        total_steps,
        checkpoint=run.checkpoints / checkpoint_name if run is not None else None,
        stage=f"{settings.stage}-state",
        parts={
            "backbone": backbone,
            "head": head,
            "optimizer": optimizer_part(optimizer, f"{settings.stage}.optimizer"),
            "stream": stream,
            # a resumed run fills the still-empty record list and best record from the checkpoint
            "history": Part(lambda: history, history.extend),
            "best": Part(lambda: best, best.update),
        },
        max_nonfinite=settings.max_nonfinite,
        every=steps_per_epoch * settings.checkpoint_every,
        stop=stop,
        resume=resume,
    )
    model_backbone = backbone
    if distributed.is_distributed() and settings.train_backbone:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model_backbone = DistributedDataParallel(backbone, device_ids=ids)
    running_loss = float("nan")

    def train_step(step: int) -> dict[str, str]:
        nonlocal running_loss
        backbone.train(settings.backbone_train_mode)
        head.train()
        final_lr = settings.lr * settings.final_lr_ratio
        lr = warmup_cosine(step, total_steps, 0, settings.lr, final_lr) if settings.cosine else settings.lr
        set_lr(optimizer, lr)
        images, labels = next(stream)
        inputs = augment(images, train=True)
        with autocast(device, settings.precision):
            with torch.set_grad_enabled(settings.train_backbone):
                features = model_backbone(inputs)
            loss = task.loss(head(features), labels)
        optimizer.zero_grad(set_to_none=True)
        if loop.finite(loss.detach(), f"{settings.stage} loss", across_ranks=True):
            loss.backward()
            distributed.average_gradients(head.parameters())
            norm = clip_grad_norm(parameters, settings.clip_grad)
            if loop.finite(norm, f"{settings.stage} gradient norm"):
                optimizer.step()
                running_loss = float(loss.detach())
        done = step + 1
        epoch = done // steps_per_epoch
        if done % steps_per_epoch == 0 and (epoch % settings.eval_every == 0 or done == total_steps):
            record: dict[str, Any] = {
                "stage": settings.stage,
                "epoch": epoch,
                "step": done,
                "lr": lr,
                "train_loss": distributed.average_scalar(running_loss),
            }
            for split in ("val", "test"):
                if split in data:
                    metrics = evaluate_classifier(backbone, head, data[split], augment, task, device)
                    record.update({f"{split}_{k}": v for k, v in metrics.items()})
            history.append(record)
            if run is not None:
                run.log(record)
            key = f"val_{task.primary_metric}"
            if key in record and (not best or record[key] > best[key]):
                best.clear()
                best.update(record)
            if on_epoch is not None:
                on_epoch(epoch, record)
        return {"loss": f"{running_loss:.3f}"}

    loop.run(train_step)
    return {
        "last": history[-1] if history else {},
        "best": best,
        "history": history,
        "seconds": loop.seconds,
        "skipped_steps": loop.skipped,
        "steps": total_steps,
    }
