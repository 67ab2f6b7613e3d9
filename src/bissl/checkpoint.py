"""Atomic checkpoints: temporary file, fsync, rename; loaded with ``weights_only=True``.

A checkpoint is a dict of tensors, plain containers and numbers. Its ``meta`` entry records what wrote
it (stage, architecture) so that a foreign or incompatible file is refused with a clear message.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bissl.errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: a crash mid-write leaves the previous file at ``path`` intact.

    A full disk (or another failed write with an error number) ends in a CheckpointError naming the file; the
    temporary file is removed either way."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        if exc.errno is None:
            raise
        raise _write_failed(target, exc.errno, exc.strerror) from None
    except RuntimeError:
        # torch reports a failed write of its zip container as a RuntimeError; a full disk is the usual cause
        Path(temporary).unlink(missing_ok=True)
        if _disk_nearly_full(target):
            raise _write_failed(target, errno.ENOSPC, None) from None
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _disk_nearly_full(target: Path) -> bool:
    """Whether the disk of ``target`` has less room left than the checkpoint it would hold (1 MiB at least)."""
    try:
        free = shutil.disk_usage(target.parent).free
        needed = target.stat().st_size if target.is_file() else 0
    except OSError:
        return False
    return free < max(needed, 1 << 20)


def _write_failed(target: Path, number: int, reason: str | None) -> CheckpointError:
    kept = (
        f"the previous '{target.name}' is intact" if target.is_file() else "no earlier checkpoint was there"
    )
    if number in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"no space left on the disk to write checkpoint '{target}' ({kept}); free space, then rerun the "
            "same command"
        )
    return CheckpointError(
        f"cannot write checkpoint '{target}' ({reason or os.strerror(number)}; {kept}); check the folder, "
        "then rerun the same command"
    )


def load_checkpoint(path: str | Path, *, expect_stage: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Load a checkpoint safely; truncated, foreign or wrong-stage files raise CheckpointError."""
    source = require_file(path, "checkpoint", "check the path or run the stage that writes it")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint '{source}' cannot be read ({reason}); it is truncated or not a bissl checkpoint"
        ) from None
    if not isinstance(state, dict) or "meta" not in state or not isinstance(state["meta"], dict):
        raise CheckpointError(f"checkpoint '{source}' is not a bissl checkpoint (no 'meta' entry)")
    stage = state["meta"].get("stage")
    if expect_stage is not None:
        allowed = (expect_stage,) if isinstance(expect_stage, str) else expect_stage
        if stage not in allowed:
            raise CheckpointError(
                f"checkpoint '{source}' was written by stage '{stage}', expected {' or '.join(allowed)}"
            )
    return state


def require_file(path: str | Path, what: str, hint: str) -> Path:
    """``path`` when it is a file; else CheckpointError saying it is a folder (naming checkpoint files in it)
    or that it does not exist, then ``hint``."""
    source = Path(path)
    if source.is_dir():
        inside = sorted([*source.glob("*.pt"), *source.glob("checkpoints/*.pt")])[:4]
        listed = ", ".join(str(file) for file in inside)
        which = f"a checkpoint file such as {listed}" if inside else "the checkpoint file itself"
        raise CheckpointError(f"{what} '{source}' is a folder, not a checkpoint file; pass {which}")
    if not source.is_file():
        raise CheckpointError(f"{what} '{source}' does not exist; {hint}")
    return source


def make_meta(stage: str, architecture: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The ``meta`` entry: stage name, format version and the architecture that produced the weights."""
    return {"stage": stage, "format": FORMAT_VERSION, "architecture": dict(architecture), **extra}


def check_architecture(state: dict[str, Any], architecture: dict[str, Any], source: str | Path) -> None:
    """Refuse a checkpoint whose architecture differs from the configured one, naming the first mismatch."""
    saved = state["meta"].get("architecture", {})
    for key in sorted(set(saved) | set(architecture)):
        if key == "in_channels" and saved.get(key) != architecture.get(key):
            raise CheckpointError(
                f"checkpoint '{source}' has model.in_channels={saved.get(key)!r} but the data has "
                f"{architecture.get(key)!r} channels; set data.channels={saved.get(key)} or use a checkpoint "
                f"trained on {architecture.get(key)}-channel images"
            )
        if saved.get(key) != architecture.get(key):
            section = "data" if key == "image_size" else "model"
            raise CheckpointError(
                f"checkpoint '{source}' has {section}.{key}={saved.get(key)!r} but the config says "
                f"{architecture.get(key)!r}; use a matching config or checkpoint"
            )


def rng_state() -> dict[str, Any]:
    """Every RNG state that training touches, in a weights_only-loadable form."""
    np_state: Any = np.random.get_state()
    python_state: Any = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(python_state[1]),
        "python_version": python_state[0],
        "python_gauss": python_state[2],
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", keys, state["numpy_pos"], int(has_gauss), float(gauss)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
