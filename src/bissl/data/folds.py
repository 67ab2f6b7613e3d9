"""Seeded, stratified k-fold splits of the labelled pool (training + validation split), for model selection
that holds up when the validation split alone is small (``search.folds``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from bissl.data.registry import TensorDataset
from bissl.errors import DataError


def fold_assignment(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """The fold (0 … folds − 1) of every sample, fixed by ``seed``.

    Single-label data are stratified: each class is shuffled and dealt round-robin, starting where the
    previous class stopped, so fold sizes differ by at most one and every class is spread evenly.
    Multi-hot (2-D) labels are shuffled and dealt without stratification.
    """
    count = int(labels.shape[0])
    if folds < 2:
        raise DataError(f"k-fold splits need at least 2 folds, got {folds}")
    if count < folds:
        raise DataError(f"cannot split {count} labelled samples into {folds} folds; lower search.folds")
    rng = np.random.default_rng(np.random.SeedSequence([seed, count, folds]))
    values = np.asarray(labels.cpu())
    if values.ndim != 1:
        order = [rng.permutation(count)]
    else:
        order = [rng.permutation(np.flatnonzero(values == c)) for c in np.unique(values)]
    assignment = np.empty(count, dtype=np.int64)
    position = 0
    for members in order:
        assignment[members] = (position + np.arange(len(members))) % folds
        position += len(members)
    return torch.from_numpy(assignment)


def pool(train: TensorDataset, val: TensorDataset) -> TensorDataset:
    """Training and validation split as one labelled pool (the training split's normalisation statistics)."""
    return replace(
        train, images=torch.cat([train.images, val.images]), labels=torch.cat([train.labels, val.labels])
    )


def fold_split(
    train: TensorDataset, val: TensorDataset, index: int, folds: int, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    """(train, held-out) of fold ``index``: the pool minus fold ``index``, and fold ``index``."""
    if not 0 <= index < folds:
        raise DataError(f"fold index {index} is not in 0 … {folds - 1}")
    labelled = pool(train, val)
    held_out = fold_assignment(labelled.labels, folds, seed) == index
    return labelled.subset(~held_out), labelled.subset(held_out)


__all__ = ["fold_assignment", "fold_split", "pool"]
