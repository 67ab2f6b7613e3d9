"""Downstream head warm-up (docs/method.md: Pipeline): a linear head trained on the frozen pretext backbone."""

from __future__ import annotations

from typing import Any

from bissl import distributed
from bissl.checkpoint import make_meta, save_checkpoint
from bissl.config import Config
from bissl.errors import ConfigError
from bissl.models import feature_dim, linear_head
from bissl.runtime import GracefulStop, RunDir, resolve_device, say, seed_everything
from bissl.train.checkpoint_formats import load_pretext
from bissl.train.classifier import ClassifierSettings, fit_classifier
from bissl.train.data_sources import downstream_data, make_downstream_augment
from bissl.train.model_factory import architecture


def warmup_settings(config: Config) -> ClassifierSettings:
    """SGD with momentum (the reference), optimiser, lr and wd of the upper level unless set, no schedule."""
    w = config.warmup
    return ClassifierSettings(
        stage="warmup",
        epochs=w.epochs,
        batch_size=w.batch_size,
        lr=w.lr if w.lr is not None else config.bilevel.upper_lr,
        weight_decay=w.weight_decay if w.weight_decay is not None else config.bilevel.upper_weight_decay,
        momentum=w.momentum,
        optimizer=w.optimizer if w.optimizer is not None else config.bilevel.upper_optimizer,
        cosine=False,
        train_backbone=False,
        backbone_train_mode=w.backbone_bn_mode == "train",
        eval_every=max(1, w.epochs),
        checkpoint_every=1,
        seed=config.seed,
        max_nonfinite=config.max_nonfinite,
        sync_bn=config.model.sync_bn,
        precision=config.precision,
        channels_last=config.channels_last,
    )


def warmup(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> dict[str, Any]:
    """Writes checkpoints/head.pt holding the head and the backbone (its BN statistics may have adapted)."""
    if config.pretext_checkpoint is None:
        raise ConfigError(
            "warmup needs pretext_checkpoint=PATH (a checkpoints/pretext.pt written by 'bissl pretrain')"
        )
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data, task = downstream_data(config, run.path)
    channels = data["train"].channels
    pretext = load_pretext(config.pretext_checkpoint, config, channels)
    backbone = pretext.backbone.to(device)
    head = linear_head(feature_dim(backbone), task.num_classes).to(device)
    augment = make_downstream_augment(config, data["train"]).to(device)
    result = fit_classifier(
        backbone,
        head,
        {"train": data["train"], "val": data["val"]},
        augment,
        task,
        warmup_settings(config),
        run,
        device,
        stop=stop,
        resume=resume,
    )
    head_path = run.checkpoints / "head.pt"
    if distributed.is_main():
        save_checkpoint(
            head_path,
            {
                "meta": make_meta("warmup", architecture(config, channels), num_classes=task.num_classes),
                "head": head.state_dict(),
                "backbone": backbone.state_dict(),
            },
        )
    summary = {
        "stage": "warmup",
        "head_checkpoint": str(head_path),
        **{k: result[k] for k in ("last", "seconds")},
    }
    run.write_summary(summary)
    say(
        f"warm-up done: val {task.primary_metric} {result['last'].get('val_' + task.primary_metric, float('nan')):.2f}"
    )
    return summary
