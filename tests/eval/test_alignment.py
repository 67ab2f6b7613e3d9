"""t-SNE embeddings and the side-by-side plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from bissl.eval.alignment import plot_tsne_pair, tsne_embedding


def test_tsne_shape_determinism_and_small_sets() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 6, generator=generator)
    with threadpool_limits(limits=1):
        first = tsne_embedding(features, seed=0)
        second = tsne_embedding(features.numpy(), seed=0)
        tiny = tsne_embedding(features[:5], seed=1)
    assert first.shape == (40, 2) and np.isfinite(first).all()
    assert np.allclose(first, second)
    assert tiny.shape == (5, 2) and np.isfinite(tiny).all()
    with pytest.raises(ValueError, match="N >= 2"):
        tsne_embedding(features[:1], seed=0)


def test_plot_writes_png_with_one_panel_per_embedding(tmp_path: Path) -> None:
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    embeddings = {"baseline": generator.normal(size=(30, 2)), "BiSSL": generator.normal(size=(30, 2))}
    path = plot_tsne_pair(embeddings, torch.from_numpy(labels), tmp_path / "figures" / "tsne.png", "t-SNE")
    content = path.read_bytes()
    assert path == tmp_path / "figures" / "tsne.png"
    assert content.startswith(b"\x89PNG") and len(content) > 5000
    width = int.from_bytes(content[16:20], "big")
    single = plot_tsne_pair({"baseline": embeddings["baseline"]}, labels, tmp_path / "one.png", "t-SNE")
    assert width > 1.5 * int.from_bytes(single.read_bytes()[16:20], "big")


def test_plot_rejects_mismatched_embedding() -> None:
    with pytest.raises(ValueError, match="expected"):
        plot_tsne_pair({"a": np.zeros((4, 2))}, np.zeros(5, dtype=int), "unused.png", "t")
