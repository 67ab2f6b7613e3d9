"""``bissl bilevel``: builds the BiSSL stage from a config, runs its alternations as a resumable stage loop
(``train/loop.py``: checkpoints, exact resume, clean stops) with logging and evaluation, and writes the lower
backbone θ_P as a plain state dict."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bissl import distributed
from bissl.bilevel.trainer import BilevelTrainer, initial_models
from bissl.checkpoint import check_architecture, load_checkpoint, save_checkpoint
from bissl.config import Config
from bissl.data.stream import BatchStream
from bissl.errors import ConfigError
from bissl.models import feature_dim, linear_head
from bissl.precision import channels_last
from bissl.runtime import GracefulStop, RunDir, resolve_device, say, seed_everything
from bissl.train.checkpoint_formats import load_pretext, save_backbone
from bissl.train.classifier import evaluate_classifier, refresh_batchnorm
from bissl.train.data_sources import (
    downstream_data,
    load_pretext_source,
    make_downstream_augment,
    make_two_view,
    pretext_stream,
)
from bissl.train.loop import Part, StageLoop
from bissl.train.model_factory import architecture, make_backbone
from bissl.train.projector_warmup import lower_exclude_bias_norm, require_trained_projector, warm_projector


def _warm_head(config: Config, run: RunDir, stop: GracefulStop, resume: bool) -> str:
    """Run the head warm-up into ``run/warmup`` when no head_checkpoint was given."""
    from bissl.train.warmup import warmup

    warm_run = RunDir(run.path / "warmup", config, resume=True, force=True)
    head_path = warm_run.checkpoints / "head.pt"
    if not head_path.is_file():
        warmup(config, warm_run, stop=stop, resume=resume)
    return str(head_path)


def train_bilevel(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> dict[str, Any]:
    """Run ``bilevel.alternations`` alternations; returns the summary (also in summary.json)."""
    stop = stop or GracefulStop()
    if config.pretext_checkpoint is None:
        raise ConfigError(
            "bilevel needs pretext_checkpoint=PATH (a checkpoints/pretext.pt written by 'bissl pretrain')"
        )
    pretext_state = load_checkpoint(config.pretext_checkpoint, expect_stage="pretrain")
    require_trained_projector(pretext_state["meta"], config, config.pretext_checkpoint)
    # A target network imported with the head (bissl import: BYOL's, MoCo v3's momentum encoder) is kept;
    # any other is re-copied from the online network once θ_P holds the warmed-up backbone.
    keep_target = pretext_state["meta"].get("target") == "imported"
    del pretext_state
    if config.head_checkpoint is not None:
        load_checkpoint(config.head_checkpoint, expect_stage="warmup")
    s = config.bilevel
    device = resolve_device(config.device)
    seed_everything(config.seed)
    pretext_data = load_pretext_source(config)
    splits, task = downstream_data(config, run.path)
    channels = pretext_data.channels
    head_path = config.head_checkpoint or _warm_head(config, run, stop, resume)
    head_state = load_checkpoint(head_path, expect_stage="warmup")
    check_architecture(head_state, architecture(config, channels), head_path)
    warm_backbone = make_backbone(config, channels)
    warm_backbone.load_state_dict(head_state["backbone"])
    seed_everything(config.seed)

    lower = load_pretext(config.pretext_checkpoint, config, channels)
    upper_backbone = initial_models(lower, warm_backbone, reset_target=not keep_target)
    upper_head = linear_head(feature_dim(upper_backbone), task.num_classes)
    upper_head.load_state_dict(head_state["head"])
    if config.model.sync_bn and distributed.is_distributed():
        distributed.convert_sync_batchnorm(lower)
        distributed.convert_sync_batchnorm(upper_backbone)
    channels_last(lower.to(device), config.channels_last)
    channels_last(upper_backbone.to(device), config.channels_last)
    upper_head.to(device)
    distributed.reseed_per_rank(config.seed)

    two_view = make_two_view(config, pretext_data).to(device)
    downstream_augment = make_downstream_augment(config, splits["train"]).to(device)
    rank, world = distributed.rank(), distributed.world_size()
    lower_stream = pretext_stream(
        config, pretext_data, s.lower_batch_size, seed=config.seed, device=device, rank=rank, world_size=world
    )
    hessian_stream = lower_stream
    if s.hessian_batch_size is not None and s.hessian_batch_size != s.lower_batch_size:
        hessian_stream = pretext_stream(
            config,
            pretext_data,
            s.hessian_batch_size,
            seed=config.seed + 1,
            device=device,
            rank=rank,
            world_size=world,
        )
    upper_stream = BatchStream(
        splits["train"], s.upper_batch_size, seed=config.seed, device=device, rank=rank, world_size=world
    )

    def lower_batches() -> tuple[torch.Tensor, torch.Tensor]:
        images, _ = next(lower_stream)
        return two_view(images)

    def hessian_batches() -> tuple[torch.Tensor, torch.Tensor]:
        images, _ = next(hessian_stream)
        return two_view(images)

    def upper_batches() -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = next(upper_stream)
        return downstream_augment(images, train=True), labels

    lower_model: torch.nn.Module = lower
    reduce = None
    if distributed.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        lower_model = DistributedDataParallel(lower, device_ids=ids)
        reduce = distributed.all_reduce_flat

    trainer = BilevelTrainer(
        lower,
        upper_backbone,
        upper_head,
        task.loss,
        lower_batches,
        upper_batches,
        s,
        hessian_batches=hessian_batches,
        lars_eta=config.pretrain.lars_eta,
        lars_exclude_bias_norm=lower_exclude_bias_norm(config),
        max_nonfinite=config.max_nonfinite,
        reduce=reduce,
        lower_model=lower_model,
        precision=config.precision,
        hvp_precision=config.hvp_precision,
    )
    streams = {"lower": lower_stream, "hessian": hessian_stream, "upper": upper_stream}

    def stream_states() -> dict[str, Any]:
        return {name: stream.state_dict() for name, stream in streams.items()}

    def restore_streams(saved: dict[str, Any]) -> None:
        for name, stream in streams.items():
            stream.load_state_dict(saved[name])

    loop = StageLoop(
        "bissl",
        s.alternations,
        checkpoint=run.last_checkpoint,
        stage="bilevel-state",
        architecture=architecture(config, channels),
        parts={"trainer": trainer, "streams": Part(stream_states, restore_streams)},
        guard=trainer.guard,
        position=lambda: trainer.alternation,
        unit="alternation",
        every=s.checkpoint_every,
        stop=stop,
        resume=resume,
    )
    if not loop.resumed:
        warm_projector(lower, config, pretext_data, two_view, run, stop=stop, device=device, resume=resume)
        if not keep_target:
            lower.reset_target()

    refreshed_at: list[int] = []  # the alternation whose weights the statistics were last recomputed at

    def refresh_upper_statistics() -> None:
        """θ_D's BatchNorm statistics at its current weights, before θ_D is evaluated or saved: the running
        averages of the upper steps trail weights that move a lot per step (docs/bilevel.md). Every rank
        passes the whole training split, so all hold the same statistics (SyncBatchNorm included). Weights
        that were already refreshed (the last alternation's validation) are not passed over again."""
        if s.upper_bn == "refresh" and refreshed_at != [trainer.alternation]:
            refresh_batchnorm(
                upper_backbone, splits["train"], downstream_augment, device, config.eval.batch_size
            )
            refreshed_at[:] = [trainer.alternation]

    totals = {"lower_seconds": 0.0, "upper_seconds": 0.0}
    record: dict[str, Any] = {}

    def alternation(index: int) -> dict[str, str]:
        nonlocal record
        record = trainer.alternate()
        shard_means = ("lower_loss", "upper_loss_lower", "upper_loss_upper")
        record |= dict(zip(shard_means, distributed.average_scalars([record[k] for k in shard_means])))
        for key in totals:
            totals[key] += record[key]
        if s.eval_every > 0 and (
            trainer.alternation % s.eval_every == 0 or trainer.alternation == s.alternations
        ):
            refresh_upper_statistics()
            metrics = evaluate_classifier(
                upper_backbone, upper_head, splits["val"], downstream_augment, task, device
            )
            record |= {f"val_{k}": v for k, v in metrics.items()}
        run.log({"stage": "bilevel", **record})
        return {"lower": f"{record['lower_loss']:.3f}", "upper": f"{record['upper_loss_lower']:.3f}"}

    loop.run(alternation, before_last_checkpoint=refresh_upper_statistics)
    lower_path = run.path / "lower_backbone.pt"
    if distributed.is_main():
        save_backbone(lower_path, lower.backbone, config, channels, stage="bilevel-lower")
        save_backbone(run.path / "upper_backbone.pt", upper_backbone, config, channels, stage="bilevel-upper")
        save_checkpoint(
            run.checkpoints / "upper_head.pt",
            {"meta": {"stage": "bilevel-head"}, "head": upper_head.state_dict()},
        )
    distributed.barrier()
    final = evaluate_classifier(upper_backbone, upper_head, splits["val"], downstream_augment, task, device)
    summary = {
        "stage": "bilevel",
        "alternations": s.alternations,
        "lower_backbone": str(lower_path),
        "last": record,
        "val_upper": final,
        "seconds": totals,
        "skipped_steps": trainer.guard.skipped,
        "settings": dataclasses.asdict(s),
    }
    run.write_summary(summary)
    say(
        f"BiSSL done: {s.alternations} alternations, upper val {task.primary_metric} {final[task.primary_metric]:.2f}"
    )
    return summary
