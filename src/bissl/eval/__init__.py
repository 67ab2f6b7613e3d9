"""Evaluation: top-k accuracy and mAP, feature extraction, k-NN and linear probes, t-SNE plots, statistics."""

from bissl.eval.alignment import plot_tsne_pair, tsne_embedding
from bissl.eval.features import extract_features
from bissl.eval.knn import knn_accuracy, knn_classify, knn_scores
from bissl.eval.metrics import average_precision, eleven_point_ap, mean_average_precision, topk_accuracy
from bissl.eval.probe import linear_probe
from bissl.eval.stats import format_summary, paired_comparison, summarize

__all__ = [
    "average_precision",
    "eleven_point_ap",
    "extract_features",
    "format_summary",
    "knn_accuracy",
    "knn_classify",
    "knn_scores",
    "linear_probe",
    "mean_average_precision",
    "paired_comparison",
    "plot_tsne_pair",
    "summarize",
    "topk_accuracy",
    "tsne_embedding",
]
