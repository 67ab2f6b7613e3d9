"""Projector warm-up: train the pretext head φ_P on the frozen backbone before the BiSSL alternations.

The lower level starts from (θ, φ_P). A checkpoint imported from a release without a projector has an untrained
φ_P, and the first lower steps would then move θ along the gradient of a random head. So
``pretext.projector_warmup_steps`` optimiser steps on the pretext loss train the head alone first: the backbone's
parameters get no gradient and its BatchNorm running statistics are restored afterwards (the forward uses batch
statistics, as the lower level does).

Optimiser: the lower level's (``bilevel.lower_optimizer``, LARS by default, with its parameter groups,
``bilevel.lower_weight_decay`` and ``lower_momentum``), peak lr ``pretext.projector_warmup_lr``, 10% linear
warm-up then cosine to ``bilevel.lower_final_lr_ratio`` of the peak, gradient clipping at ``bilevel.clip_grad``. Batches come from a pretext stream of their own (seed + 2),
so the alternations see the same data with or without a warm-up. It runs as a resumable stage loop
(``train/loop.py``): head, optimiser, stream, non-finite counter and RNG are saved to
``checkpoints/projector_warmup.pt`` every ``bilevel.checkpoint_every × bilevel.lower_steps`` steps, when stopped
and at the end; a rerun continues bit-identically.
"""

from __future__ import annotations

from typing import Any

import torch

from bissl import distributed
from bissl.bilevel.hvp import frozen_bn_stats
from bissl.config import Config
from bissl.data.augment import TwoViewAugment
from bissl.data.folder_stream import DiskDataset
from bissl.data.registry import TensorDataset
from bissl.errors import ConfigError
from bissl.optim import clip_grad_norm, make_optimizer, set_lr, warmup_cosine
from bissl.precision import autocast
from bissl.pretext import PretextTask
from bissl.runtime import GracefulStop, RunDir, say
from bissl.train.data_sources import pretext_stream
from bissl.train.loop import Part, StageLoop, optimizer_part

WARMUP_FILE = "projector_warmup.pt"
WARMUP_STAGE = "projector-warmup-state"


def lower_exclude_bias_norm(config: Config) -> bool:
    """Whether the lower level's optimiser leaves biases and norms out (bilevel knob, else pretraining's)."""
    chosen = config.bilevel.lower_lars_exclude_bias_norm
    return config.pretrain.lars_exclude_bias_norm if chosen is None else chosen


def require_trained_projector(pretext_meta: dict[str, Any], config: Config, source: str) -> None:
    """Refuse a checkpoint imported without a projector unless the projector warm-up is switched on."""
    if pretext_meta.get("projector") == "absent" and config.pretext.projector_warmup_steps == 0:
        imported = pretext_meta.get("imported") or {}
        origin = f" (imported from a {imported.get('layout')} checkpoint)" if imported else ""
        raise ConfigError(
            f"pretext checkpoint '{source}'{origin} holds no trained projector; set "
            "pretext.projector_warmup_steps=N (e.g. 1000) to train it on the frozen backbone before BiSSL"
        )


def warm_projector(
    task: PretextTask,
    config: Config,
    data: TensorDataset | DiskDataset,
    two_view: TwoViewAugment,
    run: RunDir,
    *,
    stop: GracefulStop,
    device: torch.device,
    resume: bool,
) -> dict[str, Any] | None:
    """Run the projector warm-up on ``task`` (in place); returns its summary, or None when it is off."""
    total = config.pretext.projector_warmup_steps
    if total == 0:
        return None
    s = config.bilevel
    head_parameters = [(f"head.{n}", p) for n, p in task.head.named_parameters()]
    optimizer = make_optimizer(
        s.lower_optimizer,
        head_parameters,
        lr=config.pretext.projector_warmup_lr,
        momentum=s.lower_momentum,
        weight_decay=s.lower_weight_decay,
        exclude_bias_norm=lower_exclude_bias_norm(config),
        lars_eta=config.pretrain.lars_eta,
    )
    stream = pretext_stream(
        config,
        data,
        s.lower_batch_size,
        seed=config.seed + 2,
        device=device,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )
    head_state = Part(
        lambda: {k: v for k, v in task.state_dict().items() if not k.startswith("backbone.")},
        lambda saved: task.load_state_dict(saved, strict=False),
    )
    loop = StageLoop(
        "projector warm-up",
        total,
        checkpoint=run.checkpoints / WARMUP_FILE,
        stage=WARMUP_STAGE,
        parts={
            "head": head_state,
            "optimizer": optimizer_part(optimizer, "bilevel.lower_optimizer"),
            "stream": stream,
        },
        max_nonfinite=config.max_nonfinite,
        every=max(1, s.checkpoint_every * s.lower_steps),
        stop=stop,
        resume=resume,
    )
    parameters = [p for _, p in head_parameters]
    peak = config.pretext.projector_warmup_lr
    linear_steps = round(0.1 * total)
    last_loss = float("nan")

    def warmup_step(step: int) -> dict[str, str]:
        nonlocal last_loss
        lr = warmup_cosine(step, total, linear_steps, peak, peak * s.lower_final_lr_ratio)
        set_lr(optimizer, lr)
        images, _ = next(stream)
        view1, view2 = two_view(images)
        with autocast(device, config.precision):
            loss = task(view1, view2)
        optimizer.zero_grad(set_to_none=True)
        if loop.finite(loss.detach(), "projector warm-up loss", across_ranks=True):
            loss.backward()
            _average_gradients(parameters)
            grad_norm = clip_grad_norm(parameters, s.clip_grad)
            if loop.finite(grad_norm, "projector warm-up gradient norm"):
                optimizer.step()
                task.after_step((step + 1) / total)
                last_loss = float(loss.detach())
        if (step + 1) % config.pretrain.log_every == 0 or step + 1 == total:
            loss_mean = distributed.average_scalar(last_loss)
            run.log({"stage": "projector-warmup", "step": step + 1, "loss": loss_mean, "lr": lr})
        return {"loss": f"{last_loss:.3f}", "lr": f"{lr:.3g}"}

    task.train()
    task.backbone.requires_grad_(False)
    try:
        with frozen_bn_stats(task.backbone):
            loop.run(warmup_step)
    finally:
        task.backbone.requires_grad_(True)
    if loop.start < total:
        say(f"projector warm-up done: {total} steps, loss {last_loss:.4f}")
    return {"steps": total, "final_loss": last_loss}


def _average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Average the head's gradients across ranks (one flat all-reduce; a no-op in one process)."""
    if not distributed.is_distributed():
        return
    with_grad = [p for p in parameters if p.grad is not None]
    averaged = distributed.all_reduce_flat(tuple(p.grad for p in with_grad if p.grad is not None))
    for p, g in zip(with_grad, averaged, strict=True):
        p.grad = g
