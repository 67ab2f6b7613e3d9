"""Metrics records as files hold them: plain JSON values (tensors and NumPy numbers as numbers, non-finite
floats as null), and the numbers of a record by name."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def jsonable(value: Any) -> Any:
    """``value`` with tensors, NumPy numbers and non-finite floats turned into JSON values."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def scalar_metrics(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics record by (slash-joined, for nested dicts) name; strings, booleans, lists and
    nulls are left out."""
    scalars: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            scalars.update(scalar_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            scalars[prefix + key] = float(value)
    return scalars
