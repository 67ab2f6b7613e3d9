"""Linear probe: a linear classifier trained on frozen, standardised features, scored on a test split.

The objective is convex (mean cross-entropy or BCE plus (weight_decay / 2)·‖W‖², bias not decayed), so
the classifier starts at zero and training is full-batch and deterministic; ``seed`` only draws the
held-out rows of a weight-decay sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bissl.eval.metrics import mean_average_precision, topk_accuracy

OPTIMIZERS = ("lbfgs", "adam")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.05}


@dataclass
class _LinearClassifier:
    """Standardisation statistics and the trained weights of one probe."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features.to(self.mean.device).float() - self.mean) / self.std
        return standardised @ self.weight.T + self.bias


def _fit(
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_classes: int,
    multilabel: bool,
    epochs: int,
    lr: float,
    weight_decay: float,
    optimizer_name: str,
) -> _LinearClassifier:
    """Train one linear classifier on standardised ``features`` (full batch, starting from zero)."""
    features = features.float()
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(1e-6)
    standardised = (features - mean) / std
    weight = torch.zeros(num_classes, features.shape[1], device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)
    targets = targets.float() if multilabel else targets.long()

    def objective() -> torch.Tensor:
        logits = standardised @ weight.T + bias
        if multilabel:
            data_loss = F.binary_cross_entropy_with_logits(logits, targets)
        else:
            data_loss = F.cross_entropy(logits, targets)
        return data_loss + 0.5 * weight_decay * weight.pow(2).sum()

    with torch.enable_grad():
        if optimizer_name == "lbfgs":
            lbfgs = torch.optim.LBFGS(
                [weight, bias], lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe"
            )

            def closure() -> torch.Tensor:
                lbfgs.zero_grad()
                loss = objective()
                loss.backward()
                return loss

            lbfgs.step(closure)
        else:
            adam = torch.optim.Adam([weight, bias], lr=lr)
            for _ in range(epochs):
                adam.zero_grad()
                objective().backward()
                adam.step()
    return _LinearClassifier(mean, std, weight.detach(), bias.detach())


def _score(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> dict[str, float]:
    """Test metrics in percent: top-1/top-5 or 11-point and non-interpolated mAP."""
    if multilabel:
        return {
            "map": mean_average_precision(logits, targets, eleven_point=True),
            "map_noninterpolated": mean_average_precision(logits, targets, eleven_point=False),
        }
    accuracies = topk_accuracy(logits, targets.to(logits.device), ks=(1, 5))
    return {"top1": accuracies[1], "top5": accuracies[5]}


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    multilabel: bool = False,
    epochs: int = 100,
    lr: float | None = None,
    weight_decay: float | Sequence[float] = 1e-4,
    optimizer: str = "lbfgs",
    val_fraction: float = 0.2,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Train a linear classifier on frozen features and return its test metrics (percent).

    ``epochs`` bounds the L-BFGS iterations (or counts full-batch Adam steps); ``lr`` defaults to 1.0 for
    L-BFGS and 0.05 for Adam. Standardisation uses the training rows' mean and std. When ``weight_decay``
    lists several values, each is trained on the training rows minus a held-out ``val_fraction`` (drawn
    with ``seed``) and scored there by the primary metric; the best (first on ties) is retrained on all
    training rows. Returns the metrics ("top1", "top5" or "map", "map_noninterpolated"), the chosen
    "weight_decay", "val_scores" {weight decay: held-out primary metric} (empty without a sweep), and
    "train_<primary>" (the final classifier's metric on its own training rows).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    weight_decays = [float(weight_decay)] if isinstance(weight_decay, int | float) else list(weight_decay)
    if not weight_decays or any(value < 0 for value in weight_decays):
        raise ValueError(f"weight_decay must be one or more non-negative values, got {weight_decay}")
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("need one label per feature row in both splits")
    device = torch.device(device) if device is not None else train_features.device
    train_features, train_labels = train_features.to(device), train_labels.to(device)
    fit_options: dict[str, Any] = {
        "num_classes": num_classes,
        "multilabel": multilabel,
        "epochs": epochs,
        "lr": DEFAULT_LR[optimizer] if lr is None else lr,
        "optimizer_name": optimizer,
    }
    primary = "map" if multilabel else "top1"

    val_scores: dict[float, float] = {}
    if len(weight_decays) > 1:
        if not 0 < val_fraction < 1:
            raise ValueError(f"a weight-decay sweep needs 0 < val_fraction < 1, got {val_fraction}")
        rows = train_features.shape[0]
        val_rows = min(max(1, round(val_fraction * rows)), rows - 1)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(rows, generator=generator).to(device)
        val_index, fit_index = order[:val_rows], order[val_rows:]
        for candidate in weight_decays:
            classifier = _fit(
                train_features[fit_index], train_labels[fit_index], weight_decay=candidate, **fit_options
            )
            val_logits = classifier.logits(train_features[val_index])
            score = _score(val_logits, train_labels[val_index], multilabel)[primary]
            val_scores[candidate] = float("-inf") if score != score else score
        chosen = max(weight_decays, key=lambda candidate: val_scores[candidate])
    else:
        chosen = weight_decays[0]

    classifier = _fit(train_features, train_labels, weight_decay=chosen, **fit_options)
    result: dict[str, Any] = _score(classifier.logits(test_features), test_labels, multilabel)
    result["train_" + primary] = _score(classifier.logits(train_features), train_labels, multilabel)[primary]
    result["weight_decay"] = chosen
    result["val_scores"] = val_scores
    return result
