"""Downstream classification tasks: the loss L_D and the metrics reported for it (docs/method.md: Evaluation).

Single-label tasks use cross-entropy and top-1/top-5 accuracy; multi-label tasks (VOC07) use
binary cross-entropy on logits and 11-point mAP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bissl.eval.metrics import mean_average_precision, topk_accuracy


@dataclass(frozen=True)
class DownstreamTask:
    """A classification task with ``num_classes`` outputs; multi-label targets are (N, C) floats in {0, 1}."""

    num_classes: int
    multilabel: bool = False

    def __post_init__(self) -> None:
        minimum = 1 if self.multilabel else 2
        if self.num_classes < minimum:
            kind = "a multi-label" if self.multilabel else "a single-label"
            raise ValueError(f"{kind} task needs num_classes >= {minimum}, got {self.num_classes}")

    @property
    def primary_metric(self) -> str:
        """The metric that selects models and hyper-parameters: "top1" or "map" (higher is better)."""
        return "map" if self.multilabel else "top1"

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (targets: class indices) or mean BCE-with-logits over all (row, class) pairs."""
        self._check_shapes(logits, targets)
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return F.cross_entropy(logits, targets.long())

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Percent metrics on a whole split: {"top1", "top5"} or {"map", "map_noninterpolated"}.

        "top5" counts a hit among min(5, num_classes) guesses; "map" is the VOC07 11-point mean AP and
        "map_noninterpolated" the mean of step-wise AP, both over the classes that have positives.
        """
        self._check_shapes(logits, targets)
        logits = logits.detach()
        if self.multilabel:
            return {
                "map": mean_average_precision(logits, targets, eleven_point=True),
                "map_noninterpolated": mean_average_precision(logits, targets, eleven_point=False),
            }
        accuracies = topk_accuracy(logits, targets, ks=(1, 5))
        return {"top1": accuracies[1], "top5": accuracies[5]}

    def _check_shapes(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Raise ValueError when logits or targets do not fit this task."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (N, {self.num_classes}), got {tuple(logits.shape)}")
        expected = (logits.shape[0], self.num_classes) if self.multilabel else (logits.shape[0],)
        if tuple(targets.shape) != expected:
            raise ValueError(f"targets must be {expected} for this task, got {tuple(targets.shape)}")
