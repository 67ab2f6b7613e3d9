"""Weighted k-nearest-neighbour classification of frozen features (the InstDisc / DINO k-NN monitor).

Features are L2-normalised; each test row takes its k most cosine-similar training rows, and each
neighbour votes for its label(s) with weight exp(similarity / temperature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 512,
) -> torch.Tensor:
    """Summed neighbour votes per class, (M, num_classes), on the training features' device.

    ``train_labels`` are class indices (N,) or multi-label targets (N, num_classes) in {0, 1}; test rows
    are processed ``batch_size`` at a time so memory stays at batch_size x N similarities. k is capped at N.
    """
    if (
        train_features.ndim != 2
        or test_features.ndim != 2
        or train_features.shape[1] != test_features.shape[1]
    ):
        raise ValueError(
            f"features must be (N, D) and (M, D), got {tuple(train_features.shape)} and "
            f"{tuple(test_features.shape)}"
        )
    if train_labels.shape[0] != train_features.shape[0] or train_features.shape[0] == 0:
        raise ValueError(
            f"need one label per training row and at least one row, got {train_labels.shape[0]} labels "
            f"for {train_features.shape[0]} rows"
        )
    if k < 1 or temperature <= 0 or batch_size < 1:
        raise ValueError(
            f"need k >= 1, temperature > 0, batch_size >= 1; got {k}, {temperature}, {batch_size}"
        )
    device = train_features.device
    train_unit = F.normalize(train_features.float(), dim=1)
    if train_labels.ndim == 1:
        train_votes = F.one_hot(train_labels.to(device).long(), num_classes).float()
    else:
        train_votes = train_labels.to(device).float()
    neighbours = min(k, train_unit.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], batch_size):
        test_unit = F.normalize(test_features[start : start + batch_size].to(device).float(), dim=1)
        similarities, indices = (test_unit @ train_unit.T).topk(neighbours, dim=1)
        weights = (similarities / temperature).exp()
        scores.append(torch.einsum("mk,mkc->mc", weights, train_votes[indices]))
    if not scores:
        return train_unit.new_zeros((0, num_classes))
    return torch.cat(scores)


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 512,
) -> torch.Tensor:
    """Predicted class indices (M,) for single-label ``train_labels`` (N,): the most-voted class."""
    scores = knn_scores(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        batch_size=batch_size,
    )
    return scores.argmax(dim=1)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 512,
) -> float:
    """Top-1 k-NN accuracy in percent on ``test_labels`` (M,)."""
    predictions = knn_classify(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        batch_size=batch_size,
    )
    if predictions.numel() == 0:
        raise ValueError("knn_accuracy needs at least one test row")
    return 100.0 * (predictions.cpu() == test_labels.cpu()).double().mean().item()
