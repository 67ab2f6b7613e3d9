"""Weighted k-NN: a dense float64 reference, easy Gaussian blobs, and chance level on random labels."""

from __future__ import annotations

import pytest
import torch

from bissl.eval.knn import knn_accuracy, knn_classify, knn_scores


def gaussian_blobs(
    rows_per_class: int, classes: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated blobs: class c centred at 6 * e_c with unit noise, rows shuffled."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(rows_per_class)
    centres = 6.0 * torch.eye(classes, dim)
    features = centres[labels] + torch.randn(labels.numel(), dim, generator=generator)
    order = torch.randperm(labels.numel(), generator=generator)
    return features[order], labels[order]


def test_scores_match_dense_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(30, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (30,), generator=generator)
    test = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    expected = torch.zeros(7, 4, dtype=torch.float64)
    for row in range(7):
        cosine = torch.stack([torch.dot(test[row], t) / (test[row].norm() * t.norm()) for t in train])
        for neighbour in cosine.argsort(descending=True)[:6]:
            expected[row, labels[neighbour]] += torch.exp(cosine[neighbour] / 0.1)
    ours = knn_scores(train, labels, test, num_classes=4, k=6, temperature=0.1, batch_size=3)
    assert torch.allclose(ours.double(), expected, rtol=1e-5)
    assert torch.equal(
        knn_classify(train, labels, test, num_classes=4, k=6, temperature=0.1), expected.argmax(1)
    )


def test_chunking_does_not_change_predictions_and_k_is_capped() -> None:
    train, labels = gaussian_blobs(10, 3, 6, seed=1)
    test, _ = gaussian_blobs(10, 3, 6, seed=2)
    whole = knn_scores(train, labels, test, num_classes=3, k=5, batch_size=1000)
    chunked = knn_scores(train, labels, test, num_classes=3, k=5, batch_size=7)
    assert torch.allclose(whole, chunked)
    capped = knn_scores(train, labels, test, num_classes=3, k=10_000)
    everyone = knn_scores(train, labels, test, num_classes=3, k=train.shape[0])
    assert torch.allclose(capped, everyone)


def test_multilabel_votes_sum_label_vectors() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    scores = knn_scores(train, targets, torch.tensor([[1.0, 0.0]]), num_classes=3, k=2, temperature=1.0)
    near, far = torch.exp(torch.tensor(1.0)), torch.exp(torch.tensor(0.0))
    assert torch.allclose(scores, torch.stack([near, near + far, far]).unsqueeze(0))


def test_separates_easy_blobs() -> None:
    train, train_labels = gaussian_blobs(100, 3, 8, seed=3)
    test, test_labels = gaussian_blobs(100, 3, 8, seed=4)
    assert knn_accuracy(train, train_labels, test, test_labels, num_classes=3) >= 98.0


def test_random_labels_give_chance_accuracy() -> None:
    train, _ = gaussian_blobs(100, 3, 8, seed=5)
    test, _ = gaussian_blobs(100, 3, 8, seed=6)
    generator = torch.Generator().manual_seed(7)
    train_labels = torch.randint(0, 3, (300,), generator=generator)
    test_labels = torch.randint(0, 3, (300,), generator=generator)
    accuracy = knn_accuracy(train, train_labels, test, test_labels, num_classes=3)
    assert 33.3 - 12 < accuracy < 33.3 + 12


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(
            torch.randn(4, 2),
            torch.zeros(4, dtype=torch.long),
            torch.randn(2, 2),
            num_classes=2,
            temperature=0,
        )
    with pytest.raises(ValueError, match="features"):
        knn_scores(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(2, 3), num_classes=2)
