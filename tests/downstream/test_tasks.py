"""DownstreamTask: losses against dense formulas in float64, metrics for both kinds of task."""

from __future__ import annotations

import pytest
import torch

from bissl.downstream.tasks import DownstreamTask
from bissl.eval.metrics import eleven_point_ap


def test_single_label_loss_is_mean_negative_log_softmax() -> None:
    task = DownstreamTask(num_classes=4)
    logits = torch.randn(6, 4, dtype=torch.float64)
    targets = torch.tensor([0, 3, 1, 1, 2, 0])
    log_probabilities = logits - logits.exp().sum(dim=1, keepdim=True).log()
    expected = -log_probabilities[torch.arange(6), targets].mean()
    assert task.loss(logits, targets).item() == pytest.approx(expected.item(), abs=1e-12)


def test_multilabel_loss_is_mean_binary_cross_entropy() -> None:
    task = DownstreamTask(num_classes=3, multilabel=True)
    logits = torch.randn(5, 3, dtype=torch.float64)
    targets = (torch.rand(5, 3) < 0.5).float()
    probabilities = 1 / (1 + (-logits).exp())
    expected = -(targets * probabilities.log() + (1 - targets) * (1 - probabilities).log()).mean()
    assert task.loss(logits, targets).item() == pytest.approx(expected.item(), abs=1e-12)


def test_loss_gradient_reaches_logits() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    DownstreamTask(num_classes=3).loss(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_single_label_metrics() -> None:
    task = DownstreamTask(num_classes=6)
    assert task.primary_metric == "top1"
    targets = torch.tensor([0, 1, 2, 3])
    logits = torch.zeros(4, 6)
    logits[0, 0] = 5.0  # right at rank 1
    logits[1, 2], logits[1, 1] = 5.0, 4.0  # right at rank 2
    logits[2, :] = torch.tensor([6.0, 5.0, 0.0, 4.0, 3.0, 2.0])  # right at rank 6 of 6: a top-5 miss
    logits[3, 0], logits[3, 3] = 5.0, -1.0  # right at rank 6 of 6
    assert task.metrics(logits, targets) == {"top1": 25.0, "top5": 50.0}


def test_top5_with_few_classes_counts_every_class() -> None:
    task = DownstreamTask(num_classes=3)
    logits = torch.randn(10, 3)
    metrics = task.metrics(logits, torch.randint(0, 3, (10,)))
    assert metrics["top5"] == 100.0


def test_multilabel_metrics() -> None:
    task = DownstreamTask(num_classes=3, multilabel=True)
    assert task.primary_metric == "map"
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    logits = torch.tensor([[2.0, -1.0, 0.5], [-1.0, 0.3, 0.9], [1.0, 0.2, -2.0], [1.5, -3.0, 0.0]])
    metrics = task.metrics(logits, targets)
    assert set(metrics) == {"map", "map_noninterpolated"}
    assert metrics["map"] == pytest.approx(100 * eleven_point_ap(logits, targets).mean().item())
    assert 0 < metrics["map"] < 100
    perfect = task.metrics(targets * 4 - 2, targets)
    assert perfect == {"map": pytest.approx(100.0), "map_noninterpolated": pytest.approx(100.0)}


def test_shapes_and_class_counts_are_checked() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        DownstreamTask(num_classes=1)
    with pytest.raises(ValueError, match="targets"):
        DownstreamTask(num_classes=3, multilabel=True).loss(
            torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="logits"):
        DownstreamTask(num_classes=3).metrics(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
