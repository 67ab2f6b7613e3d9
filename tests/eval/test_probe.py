"""Linear probe: separates easy blobs, chance on random labels, deterministic, sweeps weight decay."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bissl.eval.probe import linear_probe


def gaussian_blobs(
    rows_per_class: int, classes: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blobs centred at 4 * e_c with unit noise, plus a large offset the standardisation must remove."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(rows_per_class)
    features = 4.0 * torch.eye(classes, dim)[labels] + torch.randn(labels.numel(), dim, generator=generator)
    return features + 100.0, labels


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_separates_easy_blobs(optimizer: str) -> None:
    train, train_labels = gaussian_blobs(60, 3, 10, seed=0)
    test, test_labels = gaussian_blobs(60, 3, 10, seed=1)
    result = linear_probe(train, train_labels, test, test_labels, num_classes=3, optimizer=optimizer)
    assert result["top1"] >= 97.0
    assert result["top5"] == 100.0
    assert result["train_top1"] >= 97.0
    assert result["weight_decay"] == 1e-4 and result["val_scores"] == {}


def test_random_labels_stay_near_chance_on_test() -> None:
    train, _ = gaussian_blobs(100, 3, 10, seed=2)
    test, _ = gaussian_blobs(100, 3, 10, seed=3)
    generator = torch.Generator().manual_seed(4)
    train_labels = torch.randint(0, 3, (300,), generator=generator)
    test_labels = torch.randint(0, 3, (300,), generator=generator)
    result = linear_probe(train, train_labels, test, test_labels, num_classes=3)
    assert 33.3 - 12 < result["top1"] < 33.3 + 12


def test_multilabel_probe_reaches_full_map_on_linear_targets() -> None:
    generator = torch.Generator().manual_seed(5)
    directions = torch.randn(4, 12, generator=generator)
    train = torch.randn(300, 12, generator=generator)
    test = torch.randn(200, 12, generator=generator)
    train_targets, test_targets = (train @ directions.T > 0.3).float(), (test @ directions.T > 0.3).float()
    result = linear_probe(train, train_targets, test, test_targets, num_classes=4, multilabel=True)
    assert set(result) == {"map", "map_noninterpolated", "train_map", "weight_decay", "val_scores"}
    assert result["map"] >= 97.0 and result["map_noninterpolated"] >= 97.0


def test_same_seed_same_result_and_sweep_scores_every_candidate() -> None:
    train, train_labels = gaussian_blobs(40, 3, 10, seed=6)
    test, test_labels = gaussian_blobs(40, 3, 10, seed=7)
    train_labels = train_labels.clone()
    train_labels[::5] = (train_labels[::5] + 1) % 3  # label noise, so the decays score differently
    candidates = [1e-4, 1e-1, 10.0]
    kwargs: dict[str, Any] = {
        "num_classes": 3,
        "weight_decay": candidates,
        "val_fraction": 0.25,
        "seed": 3,
        "epochs": 50,
    }
    first = linear_probe(train, train_labels, test, test_labels, **kwargs)
    second = linear_probe(train, train_labels, test, test_labels, **kwargs)
    assert first == second
    assert list(first["val_scores"]) == candidates
    assert first["weight_decay"] == max(candidates, key=lambda value: first["val_scores"][value])
    assert len(set(first["val_scores"].values())) == len(candidates)


def test_rejects_bad_arguments() -> None:
    features, labels = gaussian_blobs(5, 2, 3, seed=8)
    with pytest.raises(ValueError, match="optimizer"):
        linear_probe(features, labels, features, labels, num_classes=2, optimizer="sgd")
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(
            features, labels, features, labels, num_classes=2, weight_decay=[0.1, 1.0], val_fraction=0.0
        )
