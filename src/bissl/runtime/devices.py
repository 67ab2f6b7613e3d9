"""Where a run computes and where its random draws start: the device a config names, and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from bissl import distributed
from bissl.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks this rank's GPU when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {name!r} but no CUDA device is available; use device=cpu")
    if name == "cuda":
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)
