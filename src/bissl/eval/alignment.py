"""2-D t-SNE embeddings of frozen downstream features and side-by-side plots (baseline beside BiSSL)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch


def tsne_embedding(features: torch.Tensor | np.ndarray, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """Embed features (N, D) into the plane with scikit-learn's t-SNE (PCA initialisation), (N, 2) float64.

    The perplexity is clipped to (N - 1) / 3, at least 1, so that small sets work; ``seed`` fixes the result.
    """
    from sklearn.manifold import TSNE

    array = (
        features.detach().cpu().double().numpy()
        if isinstance(features, torch.Tensor)
        else np.asarray(features)
    )
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"t-SNE needs features (N, D) with N >= 2, got shape {array.shape}")
    rows = array.shape[0]
    clipped_perplexity = max(1.0, min(float(perplexity), (rows - 1) / 3))
    init = "pca" if min(array.shape) >= 2 else "random"
    embedding = TSNE(
        n_components=2, perplexity=clipped_perplexity, init=init, random_state=seed
    ).fit_transform(array.astype(np.float64))
    return np.asarray(embedding, dtype=np.float64)


def plot_tsne_pair(
    embeddings: Mapping[str, np.ndarray],
    labels: torch.Tensor | np.ndarray,
    path: str | Path,
    title: str,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a PNG with one scatter panel per embedding (in the mapping's order), points coloured by class.

    ``labels`` are class indices (N,); multi-label targets (N, C) are coloured by their first positive class.
    A legend names the classes when there are at most 20. Returns the path written.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not embeddings:
        raise ValueError("plot_tsne_pair needs at least one embedding")
    label_array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if label_array.ndim == 2:
        label_array = np.argmax(label_array > 0, axis=1)
    label_array = label_array.astype(np.int64)
    for name, embedding in embeddings.items():
        if embedding.shape != (label_array.shape[0], 2):
            raise ValueError(
                f"embedding {name!r} has shape {embedding.shape}, expected ({label_array.shape[0]}, 2)"
            )
    classes = np.unique(label_array)
    colormap_name = "tab10" if classes.size <= 10 else "tab20" if classes.size <= 20 else "turbo"

    figure = Figure(figsize=(5.0 * len(embeddings), 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(embeddings), squeeze=False)[0]
    palette = matplotlib.colormaps[colormap_name]
    for axis, (name, embedding) in zip(axes, embeddings.items()):
        for position, class_index in enumerate(classes):
            member = label_array == class_index
            colour = palette(
                position % palette.N if classes.size <= 20 else position / max(1, classes.size - 1)
            )
            label = class_names[class_index] if class_names is not None else str(class_index)
            axis.scatter(
                embedding[member, 0], embedding[member, 1], s=6, color=colour, label=label, linewidths=0
            )
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
    if classes.size <= 20:
        axes[-1].legend(
            loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, fontsize="small", frameon=False
        )
    figure.suptitle(title)
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png", dpi=120)
    return output
