"""Shared test helpers: overrides that make every stage tiny, and a flat view of a checkpoint's tensors."""

from pathlib import Path

import torch

TINY = [
    "data.pretext=synthetic",
    "data.downstream=synthetic",
    "model.width=4",
    "model.blocks=[1]",
    "data.image_size=12",
    "pretext.projector_hidden=[8]",
    "pretext.projector_dim=8",
]

TINY_PIPELINE = [
    *TINY,
    "pretrain.steps=4",
    "pretrain.batch_size=32",
    "warmup.epochs=1",
    "bilevel.alternations=2",
    "bilevel.lower_steps=2",
    "bilevel.upper_steps=2",
    "bilevel.solver_iterations=2",
    "bilevel.lower_batch_size=32",
    "bilevel.upper_batch_size=32",
    "finetune.epochs=2",
    "finetune.batch_size=64",
    "search.trials=2",
]
"""Every stage of a whole pipeline (pretraining to fine-tuning search) at its smallest."""


def flat_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved checkpoint, keyed by its path through nested dicts."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)

    walk("", torch.load(path, weights_only=True))
    return flat
