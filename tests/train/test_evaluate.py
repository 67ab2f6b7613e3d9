"""``bissl evaluate`` and the alignment analyses on small synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from bissl.config import Config, load_config
from bissl.data.embedded import synthetic_dataset
from bissl.downstream import DownstreamTask
from bissl.runtime import RunDir, seed_everything
from bissl.train.data_sources import downstream_data
from bissl.train.evaluate import KNN_SINGLE_LABEL_NOTE, alignment, evaluate, training_rows, tsne_rows
from bissl.train.model_factory import make_backbone

SMALL = [
    "data.downstream=synthetic",
    "data.image_size=16",
    "model.width=4",
    "model.blocks=[1]",
    "eval.probe_epochs=20",
    "eval.tsne_samples=60",
    "eval.knn_k=10",
    "eval.knn_temperature=0.1",
    "device=cpu",
]


def small_config(*overrides: str) -> Config:
    return load_config(None, [*SMALL, *overrides])


def reference_knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    temperature: float,
) -> float:
    """Dense float64 weighted k-NN, one test row at a time."""
    train_unit = F.normalize(train_features.double(), dim=1)
    hits = 0
    for row, label in zip(F.normalize(test_features.double(), dim=1), test_labels):
        similarity = train_unit @ row
        nearest = torch.argsort(similarity, descending=True)[:k]
        votes = torch.zeros(10, dtype=torch.float64)
        for index in nearest:
            votes[train_labels[index]] += torch.exp(similarity[index] / temperature)
        hits += int(votes.argmax() == label)
    return 100.0 * hits / len(test_labels)


def test_evaluate_writes_knn_probe_and_tsne(tmp_path: Path) -> None:
    config = small_config()
    with threadpool_limits(limits=1):
        summary = evaluate(config, RunDir(tmp_path, config))
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["stage"] == "evaluate" and written["backbone"] is None and written["name"] == "random init"
    for key in ("knn_top1", "probe_top1", "probe_top5"):
        assert written[key] == pytest.approx(summary[key]) and 0.0 <= written[key] <= 100.0
    # Random convolutional features already separate the synthetic class patterns well above chance (10%).
    assert written["knn_top1"] > 30.0 and written["probe_top1"] > 30.0
    assert (
        written["train_samples"] == 512 and written["test_samples"] == 256 and written["tsne_samples"] == 60
    )
    png = (tmp_path / "tsne.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000

    # The same numbers from features computed here by hand: the eval view of 16-px images is normalisation
    # only, the k-NN memory is the whole training split (train + validation), the backbone the seeded init.
    data, _ = downstream_data(config, tmp_path)
    seed_everything(config.seed)
    backbone = make_backbone(config, 1).eval()
    train, test = training_rows(data), data["test"]
    mean, std = torch.tensor(train.mean).view(1, -1, 1, 1), torch.tensor(train.std).view(1, -1, 1, 1)
    with torch.no_grad():
        train_features = backbone((train.images.float() / 255 - mean) / std)
        test_features = backbone((test.images.float() / 255 - mean) / std)
    expected = reference_knn_top1(
        train_features, train.labels, test_features, test.labels, k=10, temperature=0.1
    )
    assert written["knn_top1"] == pytest.approx(expected, abs=0.5)


def test_alignment_puts_backbones_side_by_side(tmp_path: Path) -> None:
    config = small_config()
    data, task = downstream_data(config, None)
    torch.manual_seed(1)
    backbones = {"baseline": make_backbone(config, 1), "BiSSL": make_backbone(config, 1)}
    with threadpool_limits(limits=1):
        result = alignment(config, backbones, data, task, tmp_path / "alignment")
    assert list(result["probes"]) == ["baseline", "BiSSL"]
    assert result["probes"]["baseline"]["knn_top1"] != result["probes"]["BiSSL"]["knn_top1"]
    assert result["tsne"] == str(tmp_path / "alignment" / "tsne.png") and result["tsne_samples"] == 60
    png = (tmp_path / "alignment" / "tsne.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000
    assert int.from_bytes(png[16:20], "big") > int.from_bytes(png[20:24], "big")  # two panels: wide


def test_multilabel_alignment_reports_map_and_no_knn(tmp_path: Path) -> None:
    config = small_config("eval.tsne_samples=0")
    make = synthetic_dataset
    data = {
        "train": make(96, 4, 1, 16, seed=1, multilabel=True, pattern_seed=0),
        "val": make(32, 4, 1, 16, seed=3, multilabel=True, pattern_seed=0),
        "test": make(64, 4, 1, 16, seed=2, multilabel=True, pattern_seed=0),
    }
    result = alignment(
        config, {"net": make_backbone(config, 1)}, data, DownstreamTask(4, multilabel=True), tmp_path
    )
    scores = result["probes"]["net"]
    assert scores["knn_top1"] is None and scores["knn_note"] == KNN_SINGLE_LABEL_NOTE
    assert 0.0 <= scores["probe_map"] <= 100.0 and "probe_top1" not in scores
    assert result["tsne"] is None and not (tmp_path / "tsne.png").exists()


def test_tsne_rows_are_a_seeded_ordered_subset() -> None:
    rows = tsne_rows(100, 30, seed=4)
    assert rows.tolist() == sorted(set(rows.tolist())) and len(rows) == 30 and int(rows.max()) < 100
    assert torch.equal(rows, tsne_rows(100, 30, seed=4)) and not torch.equal(rows, tsne_rows(100, 30, seed=5))
    assert torch.equal(tsne_rows(20, 30, seed=4), torch.arange(20))
