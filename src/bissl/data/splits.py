"""Seeded train/validation splits, stratified by class, saved as JSON next to a run for resumes to reuse."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bissl.data.registry import TensorDataset
from bissl.errors import DataError

SPLIT_FORMAT = "bissl-split"
SPLIT_VERSION = 1


def _class_quotas(class_sizes: np.ndarray, total: int) -> np.ndarray:
    """Validation counts per class that sum to ``total``, proportional to class sizes (largest remainder)."""
    exact = class_sizes * (total / class_sizes.sum())
    quotas = np.floor(exact).astype(np.int64)
    remainder = exact - quotas
    order = np.lexsort((np.arange(len(class_sizes)), -remainder))
    for index in order[: total - int(quotas.sum())]:
        quotas[index] += 1
    return np.minimum(quotas, class_sizes)


def train_val_split(
    num_samples: int,
    val_fraction: float,
    seed: int,
    stratify_labels: torch.Tensor | np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(num_samples)`` into sorted train and validation indices (int64), fixed by ``seed``.

    The validation set has ``round(num_samples * val_fraction)`` samples. With 1-D ``stratify_labels`` every
    class gets its proportional share (largest remainder rounding); multi-hot (2-D) labels split at random.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must lie in [0, 1), got {val_fraction}")
    if num_samples < 0:
        raise DataError(f"cannot split {num_samples} samples")
    num_val = round(num_samples * val_fraction)
    rng = np.random.default_rng(np.random.SeedSequence([seed, num_samples]))
    labels = None if stratify_labels is None else np.asarray(torch.as_tensor(stratify_labels).cpu())
    if labels is not None and labels.shape[0] != num_samples:
        raise DataError(f"{labels.shape[0]} stratification labels for {num_samples} samples")
    if labels is None or labels.ndim != 1 or num_val == 0:
        val = rng.permutation(num_samples)[:num_val]
    else:
        classes, inverse, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
        quotas = _class_quotas(class_sizes, num_val)
        chosen = []
        for class_index in range(len(classes)):
            members = np.flatnonzero(inverse == class_index)
            chosen.append(rng.permutation(members)[: quotas[class_index]])
        val = np.concatenate(chosen)
    is_val = np.zeros(num_samples, dtype=bool)
    is_val[val] = True
    return torch.from_numpy(np.flatnonzero(~is_val)), torch.from_numpy(np.flatnonzero(is_val))


def save_split(
    path: str | os.PathLike[str], train_idx: torch.Tensor, val_idx: torch.Tensor, meta: dict[str, Any]
) -> None:
    """Write a split as JSON, atomically (temporary file, then rename)."""
    path = Path(path)
    train_list = [int(i) for i in torch.as_tensor(train_idx).tolist()]
    val_list = [int(i) for i in torch.as_tensor(val_idx).tolist()]
    document = {
        "format": SPLIT_FORMAT,
        "version": SPLIT_VERSION,
        "num_samples": int(meta.get("num_samples", len(train_list) + len(val_list))),
        "meta": meta,
        "train": train_list,
        "val": val_list,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_split(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Read a split written by :func:`save_split` as (train_idx, val_idx, meta), checking the indices."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise DataError(f"split file {path} is unreadable ({error}); delete it to draw a new split") from None
    if not isinstance(document, dict) or document.get("format") != SPLIT_FORMAT:
        raise DataError(f"{path} is not a bissl split file; delete it or point to another path")
    try:
        num_samples = int(document["num_samples"])
        train = np.asarray(document["train"], dtype=np.int64).reshape(-1)
        val = np.asarray(document["val"], dtype=np.int64).reshape(-1)
        meta = dict(document.get("meta", {}))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"split file {path} is malformed; delete it to draw a new split") from None
    both = np.concatenate([train, val])
    if both.size and (both.min() < 0 or both.max() >= num_samples or np.unique(both).size != both.size):
        raise DataError(
            f"split file {path} has out-of-range or repeated indices; delete it to draw a new split"
        )
    meta["num_samples"] = num_samples
    return torch.from_numpy(train), torch.from_numpy(val), meta


def split_dataset(
    dataset: TensorDataset,
    val_fraction: float,
    seed: int,
    path: str | os.PathLike[str] | None = None,
) -> tuple[TensorDataset, TensorDataset]:
    """Split a dataset into (train, val), stratified for single-label data.

    With ``path``, an existing split file is reused as it is (so every seed of an experiment shares one
    split), after checking it was made for a dataset of this size; otherwise the new split is written there.
    """
    if path is not None and Path(path).exists():
        train_idx, val_idx, meta = load_split(path)
        if meta["num_samples"] != len(dataset):
            raise DataError(
                f"split file {path} was made for {meta['num_samples']} samples but dataset {dataset.name!r} "
                f"has {len(dataset)}; delete the file or use the dataset it was made for"
            )
        recorded_name = meta.get("dataset")
        if recorded_name is not None and recorded_name != dataset.name:
            raise DataError(
                f"split file {path} was made for dataset {recorded_name!r}, not {dataset.name!r}; "
                "delete the file or use the dataset it was made for"
            )
        return dataset.subset(train_idx), dataset.subset(val_idx)
    stratify = None if dataset.multilabel else dataset.labels
    train_idx, val_idx = train_val_split(len(dataset), val_fraction, seed, stratify_labels=stratify)
    if path is not None:
        meta = {
            "dataset": dataset.name,
            "num_samples": len(dataset),
            "val_fraction": val_fraction,
            "seed": seed,
            "stratified": stratify is not None,
        }
        save_split(path, train_idx, val_idx, meta)
    return dataset.subset(train_idx), dataset.subset(val_idx)
