"""Classification metrics: top-k accuracy (single-label) and average precision (multi-label, VOC07).

Accuracies and mean APs are in percent; per-class APs are fractions in [0, 1]. A class without
positive examples has no defined AP: it is NaN per class and left out of every mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ELEVEN_RECALL_THRESHOLDS = tuple(step / 10 for step in range(11))


def topk_accuracy(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Percent of rows whose target is among the k highest logits, for each k (capped at the class count).

    The returned keys are the requested ks, so ``topk_accuracy(x, y)[5]`` exists even with three classes.
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"topk_accuracy needs logits (N, C) and targets (N,), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("topk_accuracy needs at least one row")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {tuple(ks)}")
    num_classes = logits.shape[1]
    largest_k = min(max(ks), num_classes)
    top_indices = logits.topk(largest_k, dim=1).indices
    hits = top_indices == targets.to(top_indices.device).unsqueeze(1)
    hit_rank_cumulative = hits.cumsum(dim=1).clamp(max=1).double()
    return {k: 100.0 * hit_rank_cumulative[:, min(k, num_classes) - 1].mean().item() for k in ks}


def _precision_recall_points(
    scores: torch.Tensor, positives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall at every distinct score threshold, from the highest score down.

    Tied scores form a single threshold, so the result does not depend on the order of tied rows.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order]
    sorted_positives = positives[order].to(torch.float64)
    true_positives = sorted_positives.cumsum(0)
    predicted = torch.arange(1, scores.numel() + 1, dtype=torch.float64, device=scores.device)
    last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    true_positives, predicted = true_positives[last_of_tie], predicted[last_of_tie]
    precision = true_positives / predicted
    recall = true_positives / true_positives[-1]
    return precision, recall


def _per_class(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate and bring (N,) or (N, C) inputs to (N, C); the flag says whether the input was 1-D."""
    if scores.shape != targets.shape or scores.ndim not in (1, 2):
        raise ValueError(
            f"scores and targets must have the same shape (N,) or (N, C), got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if scores.shape[0] == 0:
        raise ValueError("average precision needs at least one row")
    one_dimensional = scores.ndim == 1
    if one_dimensional:
        scores, targets = scores.unsqueeze(1), targets.unsqueeze(1)
    return scores.detach(), targets.detach().to(scores.device) > 0, one_dimensional


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Non-interpolated AP per class: the sum over thresholds of precision times the recall gained.

    This is the step-wise area under the precision-recall curve (scikit-learn's definition). Inputs are
    (N,) or (N, C) with targets in {0, 1}; the result has shape () or (C,), NaN for a class without positives.
    """
    scores, positives, one_dimensional = _per_class(scores, targets)
    per_class = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for index in range(scores.shape[1]):
        if not positives[:, index].any():
            continue
        precision, recall = _precision_recall_points(scores[:, index], positives[:, index])
        recall_gain = torch.diff(recall, prepend=recall.new_zeros(1))
        per_class[index] = (recall_gain * precision).sum().cpu()
    return per_class[0] if one_dimensional else per_class


def eleven_point_ap(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """VOC07 AP per class: mean over recall thresholds 0, 0.1, ..., 1 of the best precision at recall >= t.

    A threshold no operating point reaches contributes precision 0. Shapes and NaNs as in
    ``average_precision``.
    """
    scores, positives, one_dimensional = _per_class(scores, targets)
    per_class = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    thresholds = torch.tensor(ELEVEN_RECALL_THRESHOLDS, dtype=torch.float64)
    for index in range(scores.shape[1]):
        if not positives[:, index].any():
            continue
        precision, recall = _precision_recall_points(scores[:, index], positives[:, index])
        precision, recall = precision.cpu(), recall.cpu()
        # Best precision from each operating point to the end of the curve: at recall >= that point's recall.
        best_precision_from = precision.flip(0).cummax(0).values.flip(0)
        first_reaching = torch.searchsorted(recall, thresholds - 1e-12)
        reached = first_reaching < recall.numel()
        interpolated = torch.zeros_like(thresholds)
        interpolated[reached] = best_precision_from[first_reaching[reached]]
        per_class[index] = interpolated.mean()
    return per_class[0] if one_dimensional else per_class


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor, eleven_point: bool = True) -> float:
    """Mean AP in percent over the classes that have positives (11-point VOC07 AP by default).

    Classes without any positive example are left out of the mean; NaN when no class has one.
    """
    per_class = eleven_point_ap(scores, targets) if eleven_point else average_precision(scores, targets)
    per_class = per_class.reshape(-1)
    defined = per_class[~per_class.isnan()]
    if defined.numel() == 0:
        return float("nan")
    return 100.0 * defined.mean().item()
