"""Test settings shared by every test: one thread, deterministic seeds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("BISSL_QUIET", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
