"""Fine-tuning (docs/method.md: Pipeline): a backbone checkpoint gets a fresh linear head and is trained end to end."""

from __future__ import annotations

from typing import Any

from bissl import distributed
from bissl.config import Config
from bissl.data.folds import fold_split
from bissl.models import feature_dim, linear_head
from bissl.runtime import GracefulStop, RunDir, resolve_device, say, seed_everything
from bissl.train.checkpoint_formats import load_backbone_weights
from bissl.train.classifier import ClassifierSettings, fit_classifier
from bissl.train.data_sources import downstream_data, make_downstream_augment
from bissl.train.model_factory import make_backbone


def finetune_settings(
    config: Config,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    epochs: int | None = None,
    seed: int | None = None,
) -> ClassifierSettings:
    """``finetune.optimizer`` (SGD with momentum by default, or AdamW) and a per-step cosine schedule (no
    warm-up) to ``finetune.final_lr_ratio`` of the peak; search trials and seed runs come through here too."""
    f = config.finetune
    return ClassifierSettings(
        stage="finetune",
        epochs=epochs if epochs is not None else f.epochs,
        batch_size=f.batch_size,
        lr=lr if lr is not None else f.lr,
        weight_decay=weight_decay if weight_decay is not None else f.weight_decay,
        momentum=f.momentum,
        optimizer=f.optimizer,
        cosine=True,
        final_lr_ratio=f.final_lr_ratio,
        train_backbone=True,
        backbone_train_mode=True,
        eval_every=f.eval_every,
        checkpoint_every=f.checkpoint_every,
        seed=config.seed if seed is None else seed,
        max_nonfinite=config.max_nonfinite,
        sync_bn=config.model.sync_bn,
        precision=config.precision,
        channels_last=config.channels_last,
    )


def run_finetune(
    config: Config,
    run: RunDir | None,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    splits: tuple[str, ...] = ("val", "test"),
    fold: tuple[int, int] | None = None,
    stop: GracefulStop | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """One fine-tuning run of ``config.backbone`` (random initialisation when it is None).

    ``fold=(i, k)`` trains on the labelled pool (training + validation split) minus its i-th of k stratified
    folds and validates on that fold (``search.folds``), instead of the training and validation splits."""
    device = resolve_device(config.device)
    run_seed = config.seed if seed is None else seed
    seed_everything(run_seed)
    data, task = downstream_data(config, run.path if run is not None else None)
    if fold is not None:
        data["train"], data["val"] = fold_split(
            data["train"], data["val"], fold[0], fold[1], config.data.split_seed
        )
    channels = data["train"].channels
    if config.backbone is not None:
        backbone = load_backbone_weights(config.backbone, config, channels)
    else:
        backbone = make_backbone(config, channels)
    backbone = backbone.to(device)
    head = linear_head(feature_dim(backbone), task.num_classes).to(device)
    augment = make_downstream_augment(config, data["train"]).to(device)
    settings = finetune_settings(config, lr=lr, weight_decay=weight_decay, epochs=epochs, seed=run_seed)
    used = {"train": data["train"], **{s: data[s] for s in splits}}
    return fit_classifier(
        backbone, head, used, augment, task, settings, run, device, stop=stop, resume=resume
    ) | {"primary_metric": task.primary_metric}


def finetune(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> dict[str, Any]:
    """``bissl finetune``: best (on validation) and last metrics in summary.json."""
    result = run_finetune(config, run, stop=stop, resume=resume)
    summary = {
        "stage": "finetune",
        "backbone": config.backbone,
        "best": result["best"],
        "last": result["last"],
        "seconds": result["seconds"],
    }
    run.write_summary(summary)
    if distributed.is_main():
        metric = result["primary_metric"]
        say(
            f"fine-tune done: test {metric} {result['last'].get('test_' + metric, float('nan')):.2f} (last epoch)"
        )
    return summary
