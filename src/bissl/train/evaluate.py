"""``bissl evaluate`` and the alignment analyses (docs/method.md: Evaluation): how well frozen backbone features fit the
downstream task before any fine-tuning: weighted k-NN, a linear probe, and t-SNE of the test features."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bissl.config import Config
from bissl.data.registry import TensorDataset
from bissl.downstream import DownstreamTask
from bissl.eval import extract_features, knn_accuracy, linear_probe, plot_tsne_pair, tsne_embedding
from bissl.runtime import GracefulStop, RunDir, resolve_device, say, seed_everything
from bissl.train.checkpoint_formats import load_backbone_weights
from bissl.train.data_sources import downstream_data, make_downstream_augment
from bissl.train.model_factory import make_backbone

PROBE_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2)
KNN_SINGLE_LABEL_NOTE = (
    "k-NN accuracy is reported for single-label tasks only; multi-label tasks use the probe's mAP"
)


def training_rows(data: dict[str, TensorDataset]) -> TensorDataset:
    """The whole downstream training split: the fine-tuning train part plus its validation part."""
    train = data["train"]
    if "val" not in data or len(data["val"]) == 0:
        return train
    val = data["val"]
    return dataclasses.replace(
        train, images=torch.cat([train.images, val.images]), labels=torch.cat([train.labels, val.labels])
    )


def tsne_rows(count: int, limit: int, seed: int) -> torch.Tensor:
    """At most ``limit`` row indices out of ``count``, drawn with ``seed`` and kept in order."""
    if limit >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:limit].sort().values


def alignment(
    config: Config,
    backbones: dict[str, nn.Module],
    data: dict[str, TensorDataset],
    task: DownstreamTask,
    out_dir: str | Path,
    *,
    stop: GracefulStop | None = None,
) -> dict[str, Any]:
    """k-NN and linear-probe scores of each named frozen backbone, and ``out_dir/tsne.png``: one t-SNE panel
    per backbone (in the mapping's order) of the same seeded subset of downstream test features.

    Features come from the eval transform (resize, centre crop, normalise) of the training split (train plus
    validation) and the test split. Returns {"probes": {name: {"knn_top1", "probe_top1", "probe_top5" or
    "probe_map", ...}}, "tsne": path or None, "tsne_samples", "knn_k", "knn_temperature", "probe_epochs"}.
    """
    stop = stop or GracefulStop()
    device = resolve_device(config.device)
    settings = config.eval
    train, test = training_rows(data), data["test"]
    augment = make_downstream_augment(config, data["train"]).to(device)

    def eval_view(images: torch.Tensor) -> torch.Tensor:
        return augment(images, train=False)

    subset = tsne_rows(len(test), settings.tsne_samples, config.seed)
    probes: dict[str, dict[str, Any]] = {}
    embeddings = {}
    for name, backbone in backbones.items():
        backbone.to(device)
        options: dict[str, Any] = {
            "batch_size": settings.batch_size,
            "device": device,
            "transform": eval_view,
        }
        train_features = extract_features(backbone, train.images, **options)
        test_features = extract_features(backbone, test.images, **options)
        scores: dict[str, Any] = {"feature_dim": int(train_features.shape[1])}
        if task.multilabel:
            scores["knn_top1"] = None
            scores["knn_note"] = KNN_SINGLE_LABEL_NOTE
        else:
            scores["knn_top1"] = knn_accuracy(
                train_features,
                train.labels,
                test_features,
                test.labels,
                num_classes=task.num_classes,
                k=settings.knn_k,
                temperature=settings.knn_temperature,
            )
        probe = linear_probe(
            train_features,
            train.labels,
            test_features,
            test.labels,
            num_classes=task.num_classes,
            multilabel=task.multilabel,
            epochs=settings.probe_epochs,
            weight_decay=PROBE_WEIGHT_DECAYS,
            seed=config.seed,
        )
        for key in ("top1", "top5", "map", "map_noninterpolated"):
            if key in probe:
                scores[f"probe_{key}"] = probe[key]
        scores["probe_weight_decay"] = probe["weight_decay"]
        probes[name] = scores
        if subset.numel() >= 2:
            embeddings[name] = tsne_embedding(test_features[subset], seed=config.seed)
        stop.check()
    figure = None
    if embeddings:
        title = f"t-SNE of frozen {config.data.downstream} test features ({subset.numel()} points)"
        figure = plot_tsne_pair(embeddings, test.labels[subset], Path(out_dir) / "tsne.png", title)
    return {
        "probes": probes,
        "tsne": str(figure) if figure is not None else None,
        "tsne_samples": int(subset.numel()) if embeddings else 0,
        "knn_k": settings.knn_k,
        "knn_temperature": settings.knn_temperature,
        "probe_epochs": settings.probe_epochs,
        "train_samples": len(train),
        "test_samples": len(test),
    }


def backbone_label(config: Config) -> str:
    """A short name for ``config.backbone`` in tables and figures."""
    return "random init" if config.backbone is None else Path(config.backbone).stem


def evaluate(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> dict[str, Any]:
    """``bissl evaluate``: alignment numbers of ``config.backbone`` (random initialisation when None) in
    summary.json, and tsne.png. It takes seconds to minutes, so a rerun simply recomputes."""
    started = time.perf_counter()
    seed_everything(config.seed)
    data, task = downstream_data(config, run.path)
    channels = data["train"].channels
    if config.backbone is not None:
        backbone = load_backbone_weights(config.backbone, config, channels)
    else:
        backbone = make_backbone(config, channels)
    name = backbone_label(config)
    result = alignment(config, {name: backbone}, data, task, run.path, stop=stop)
    scores = result["probes"][name]
    summary = {
        "stage": "evaluate",
        "backbone": config.backbone,
        "name": name,
        "primary_metric": task.primary_metric,
        **scores,
        **{key: value for key, value in result.items() if key != "probes"},
        "seconds": time.perf_counter() - started,
    }
    run.log({"stage": "evaluate", **scores})
    run.write_summary(summary)
    knn = scores["knn_top1"]
    probe = scores.get("probe_top1", scores.get("probe_map"))
    knn_text = f"k-NN top1 {knn:.2f}, " if knn is not None else ""
    say(f"evaluate {name}: {knn_text}linear probe {task.primary_metric} {probe:.2f}")
    return summary
