"""Data: named datasets in memory as uint8 tensors, seeded splits, batched view augmentations, streams.

The registry (:mod:`bissl.data.registry`) holds the dataset type and the names, and is the one lookup; the
embedded sets (:mod:`bissl.data.embedded`) and the torchvision layouts and image folders
(:mod:`bissl.data.torchvision_sets`, read by :mod:`bissl.data.layout_readers`, found by
:mod:`bissl.data.locations`, decoded once into :mod:`bissl.data.decode_cache`) register into it. Importing
this package imports both, so every name is registered before a lookup.
"""

from bissl.data import embedded, torchvision_sets
from bissl.data.augment import (
    DownstreamAugment,
    Normalize,
    TwoViewAugment,
    ViewOptions,
    blur_kernel_size,
    reference_pil_transform,
    to_float,
)
from bissl.data.embedded import read_idx, synthetic_dataset
from bissl.data.registry import (
    DATASETS,
    DatasetInfo,
    TensorDataset,
    dataset_names,
    load_dataset,
    register_dataset,
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
    "embedded",
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
    "torchvision_sets",
    "train_val_split",
]
