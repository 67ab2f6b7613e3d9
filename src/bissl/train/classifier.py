"""The supervised loop shared by head warm-up and fine-tuning: SGD with momentum over an endless,
resumable batch stream, evaluation at epoch ends, best-on-validation tracking and exact resume."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bissl import distributed
from bissl.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from bissl.data.augment import DownstreamAugment
from bissl.data.registry import TensorDataset
from bissl.data.stream import BatchStream
from bissl.downstream import DownstreamTask
from bissl.models.batchnorm import recompute_batchnorm_statistics
from bissl.optim import clip_grad_norm, set_lr, warmup_cosine
from bissl.precision import autocast, channels_last
from bissl.runtime import GracefulStop, NonFiniteGuard, RunDir, progress


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
    parameters = [*head.parameters()]
    if settings.train_backbone:
        parameters = [*backbone.parameters(), *parameters]
    else:
        backbone.requires_grad_(False)
    optimizer = torch.optim.SGD(
        parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
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
    guard = NonFiniteGuard(settings.max_nonfinite)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    step = 0
    checkpoint_path = run.checkpoints / checkpoint_name if run is not None else None
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, expect_stage=f"{settings.stage}-state")
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["stream"])
        guard.load_state_dict(state["guard"])
        set_rng_state(distributed.own_entry(state["rng"]))
        step, history, best = int(state["step"]), list(state["history"]), dict(state["best"])

    model_backbone = backbone
    if distributed.is_distributed() and settings.train_backbone:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model_backbone = DistributedDataParallel(backbone, device_ids=ids)

    def checkpoint() -> None:
        rng = distributed.per_rank(rng_state())
        if checkpoint_path is not None and distributed.is_main():
            save_checkpoint(
                checkpoint_path,
                {
                    "meta": {"stage": f"{settings.stage}-state"},
                    "backbone": backbone.state_dict(),
                    "head": head.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "stream": stream.state_dict(),
                    "guard": guard.state_dict(),
                    "rng": rng,
                    "step": step,
                    "history": history,
                    "best": best,
                },
            )
        distributed.barrier()

    started = time.perf_counter()
    bar = progress(total_steps, settings.stage, initial=step)
    running_loss = float("nan")
    while step < total_steps:
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
        if guard.ok(distributed.agree_finite(loss.detach()), f"{settings.stage} loss", step):
            loss.backward()
            distributed.average_gradients(head.parameters())
            norm = clip_grad_norm(parameters, settings.clip_grad)
            if guard.ok(norm, f"{settings.stage} gradient norm", step):
                optimizer.step()
                running_loss = float(loss.detach())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{running_loss:.3f}")
        epoch_done = step % steps_per_epoch == 0
        epoch = step // steps_per_epoch
        if epoch_done and (epoch % settings.eval_every == 0 or step == total_steps):
            record: dict[str, Any] = {
                "stage": settings.stage,
                "epoch": epoch,
                "step": step,
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
                best = dict(record)
            if on_epoch is not None:
                on_epoch(epoch, record)
        if distributed.agree_stop(stop) or (epoch_done and epoch % settings.checkpoint_every == 0):
            checkpoint()
            stop.check()
    bar.close()
    checkpoint()
    return {
        "last": history[-1] if history else {},
        "best": best,
        "history": history,
        "seconds": time.perf_counter() - started,
        "skipped_steps": guard.skipped,
        "steps": total_steps,
    }
