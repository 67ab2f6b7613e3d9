"""Top-k accuracy against a direct count; AP against scikit-learn, a VOC07 reference and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from bissl.eval.metrics import average_precision, eleven_point_ap, mean_average_precision, topk_accuracy


def _voc07_reference(scores: np.ndarray, positives: np.ndarray) -> float:
    """The VOC07 devkit's per-rank 11-point AP (valid when scores have no ties)."""
    order = np.argsort(-scores)
    hits = positives[order].astype(np.float64)
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    recall = true_positives / hits.sum()
    total = 0.0
    for threshold in np.linspace(0.0, 1.0, 11):
        reaching = precision[recall >= threshold - 1e-12]
        total += reaching.max() if reaching.size else 0.0
    return total / 11


def test_topk_accuracy_equals_direct_count() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(60, 7, generator=generator)
    targets = torch.randint(0, 7, (60,), generator=generator)
    result = topk_accuracy(logits, targets, ks=(1, 3, 5))
    for k in (1, 3, 5):
        hits = sum(
            int(targets[row]) in logits[row].argsort(descending=True)[:k].tolist() for row in range(60)
        )
        assert result[k] == pytest.approx(100.0 * hits / 60)
    assert 0 < result[1] < result[3] < result[5] < 100


def test_topk_caps_k_at_class_count_and_counts_perfect_predictions() -> None:
    targets = torch.tensor([0, 2, 1, 2])
    perfect = torch.nn.functional.one_hot(targets, 3).float()
    result = topk_accuracy(perfect, targets, ks=(1, 5))
    assert result == {1: 100.0, 5: 100.0}
    wrong = 1.0 - perfect
    assert topk_accuracy(wrong, targets, ks=(1, 2))[1] == 0.0


def test_topk_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="logits"):
        topk_accuracy(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_average_precision_matches_scikit_learn_per_class() -> None:
    generator = torch.Generator().manual_seed(2)
    targets = (torch.rand(80, 5, generator=generator) < 0.3).float()
    scores = torch.randn(80, 5, generator=generator) + 1.5 * targets
    ours = average_precision(scores, targets)
    for column in range(5):
        expected = average_precision_score(targets[:, column].numpy(), scores[:, column].numpy())
        assert ours[column].item() == pytest.approx(expected, abs=1e-12)


def test_average_precision_matches_scikit_learn_with_tied_scores() -> None:
    generator = torch.Generator().manual_seed(3)
    targets = (torch.rand(60, generator=generator) < 0.4).float()
    scores = torch.randint(0, 5, (60,), generator=generator).float() + targets
    expected = average_precision_score(targets.numpy(), scores.numpy())
    assert average_precision(scores, targets).item() == pytest.approx(expected, abs=1e-12)


def test_eleven_point_ap_hand_worked_example() -> None:
    # Ranked by score: pos, neg, pos, neg, neg (2 positives).
    # Operating points (precision, recall): (1, 0.5), (1/2, 0.5), (2/3, 1), (1/2, 1), (2/5, 1).
    # Recall thresholds 0, 0.1, ..., 0.5 (six of them): best precision at recall >= t is 1.
    # Thresholds 0.6, ..., 1.0 (five): best precision at recall >= t is 2/3.
    # 11-point AP = (6 * 1 + 5 * 2/3) / 11 = 28/33.  Non-interpolated AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    assert eleven_point_ap(scores, targets).item() == pytest.approx(28 / 33, abs=1e-12)
    assert average_precision(scores, targets).item() == pytest.approx(5 / 6, abs=1e-12)


def test_eleven_point_ap_treats_tied_scores_as_one_threshold() -> None:
    # Scores 0.9 (neg), 0.5 (pos), 0.5 (neg), 0.1 (pos): three thresholds with (P, R) =
    # (0, 0), (1/3, 1/2), (1/2, 1).
    # Every recall threshold's best precision is 1/2, so 11-point AP = 1/2; non-interpolated
    # AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12. Swapping the tied rows must not change either.
    scores = torch.tensor([0.9, 0.5, 0.5, 0.1])
    for targets in (torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])):
        assert eleven_point_ap(scores, targets).item() == pytest.approx(0.5, abs=1e-12)
        assert average_precision(scores, targets).item() == pytest.approx(5 / 12, abs=1e-12)


def test_eleven_point_ap_matches_voc07_reference_without_ties() -> None:
    generator = torch.Generator().manual_seed(4)
    targets = (torch.rand(120, 4, generator=generator) < 0.25).float()
    scores = torch.randn(120, 4, generator=generator, dtype=torch.float64) + targets
    ours = eleven_point_ap(scores, targets)
    for column in range(4):
        expected = _voc07_reference(scores[:, column].numpy(), targets[:, column].numpy())
        assert ours[column].item() == pytest.approx(expected, abs=1e-12)


def test_mean_average_precision_ignores_classes_without_positives() -> None:
    generator = torch.Generator().manual_seed(5)
    targets = (torch.rand(40, 4, generator=generator) < 0.4).float()
    targets[:, 2] = 0.0
    scores = torch.randn(40, 4, generator=generator) + targets
    per_class = eleven_point_ap(scores, targets)
    assert math.isnan(per_class[2].item())
    kept = per_class[[0, 1, 3]]
    assert mean_average_precision(scores, targets) == pytest.approx(100 * kept.mean().item())
    expected_area = np.mean(
        [average_precision_score(targets[:, c].numpy(), scores[:, c].numpy()) for c in (0, 1, 3)]
    )
    assert mean_average_precision(scores, targets, eleven_point=False) == pytest.approx(100 * expected_area)
    assert math.isnan(mean_average_precision(scores, torch.zeros_like(targets)))


def test_perfect_ranking_has_full_average_precision() -> None:
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert mean_average_precision(targets * 2 - 1, targets) == pytest.approx(100.0)
    assert mean_average_precision(targets * 2 - 1, targets, eleven_point=False) == pytest.approx(100.0)
