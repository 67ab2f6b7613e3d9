"""Data: named datasets in memory as uint8 tensors, seeded splits, batched view augmentations, streams."""

from bissl.data.augment import (
    DownstreamAugment,
    Normalize,
    TwoViewAugment,
    ViewOptions,
    blur_kernel_size,
    reference_pil_transform,
    to_float,
)
from bissl.data.datasets import (
    DATASETS,
    DatasetInfo,
    TensorDataset,
    dataset_names,
    load_dataset,
    read_idx,
    register_dataset,
    synthetic_dataset,
)
from bissl.data.splits import load_split, save_split, split_dataset, train_val_split
from bissl.data.stream import BatchStream, epoch_batches

__all__ = [
    "DATASETS",
    "BatchStream",
    "DatasetInfo",
    "DownstreamAugment",
    "Normalize",
    "TensorDataset",
    "TwoViewAugment",
    "ViewOptions",
    "blur_kernel_size",
    "dataset_names",
    "epoch_batches",
    "load_dataset",
    "load_split",
    "read_idx",
    "reference_pil_transform",
    "register_dataset",
    "save_split",
    "split_dataset",
    "synthetic_dataset",
    "to_float",
    "train_val_split",
]
