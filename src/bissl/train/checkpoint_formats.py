"""Checkpoint formats of the stages: the pretext checkpoint (whole task plus plain backbone) and the plain
backbone file with its JSON sidecar, each checked against the configured architecture on load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bissl.checkpoint import check_architecture, load_checkpoint, make_meta, require_file, save_checkpoint
from bissl.config import Config
from bissl.errors import CheckpointError
from bissl.pretext import PretextTask
from bissl.train.model_factory import architecture, make_backbone, make_pretext


def save_pretext(path: Path, task: PretextTask, config: Config, channels: int, **extra: Any) -> Path:
    """The pretext checkpoint: whole task (backbone, head, BYOL target) plus the plain backbone."""
    state = {
        "meta": make_meta("pretrain", architecture(config, channels), method=config.pretext.method, **extra),
        "task": task.state_dict(),
        "backbone": task.backbone.state_dict(),
    }
    return save_checkpoint(path, state)


def load_pretext(path: str | Path, config: Config, channels: int) -> PretextTask:
    """A pretext task restored from a pretext checkpoint (refused if the architecture or method differs)."""
    state = load_checkpoint(path, expect_stage="pretrain")
    check_architecture(state, architecture(config, channels), path)
    method = state["meta"].get("method")
    if method != config.pretext.method:
        raise CheckpointError(
            f"checkpoint '{path}' was trained with pretext.method={method!r} but the config says "
            f"{config.pretext.method!r}; set pretext.method={method}"
        )
    task = make_pretext(config, channels)
    task.load_state_dict(state["task"])
    return task


def save_backbone(path: Path, backbone: nn.Module, config: Config, channels: int, stage: str) -> Path:
    """A plain backbone state dict (loads with ``load_state_dict``) and a JSON sidecar naming its origin."""
    save_checkpoint(path, {k: v.detach().cpu() for k, v in backbone.state_dict().items()})
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({"stage": stage, "architecture": architecture(config, channels)}, indent=2))
    return path


def load_backbone_weights(path: str | Path, config: Config, channels: int) -> nn.Module:
    """A backbone from a plain state dict (``save_backbone``) or from a pretext checkpoint."""
    source = require_file(path, "backbone checkpoint", "check backbone=PATH")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(
            f"backbone checkpoint '{source}' cannot be read; it is truncated or not a checkpoint"
        ) from None
    if isinstance(state, dict) and "meta" in state:
        check_architecture(state, architecture(config, channels), source)
        if "backbone" not in state:
            raise CheckpointError(f"checkpoint '{source}' holds no backbone weights")
        state = state["backbone"]
    else:
        sidecar = source.with_suffix(".json")
        if sidecar.is_file():
            check_architecture(
                {"meta": json.loads(sidecar.read_text())}, architecture(config, channels), source
            )
    backbone = make_backbone(config, channels)
    try:
        backbone.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:150]
        raise CheckpointError(
            f"backbone checkpoint '{source}' does not fit model.{config.model.backbone}: {first}"
        ) from None
    return backbone
