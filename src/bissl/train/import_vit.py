"""ViT backbones for ``bissl import``: the shape a checkpoint's ViT has, a one-line refusal naming the
``model.*`` settings that build it when it differs from the configured one, and the two adaptations a
timm-named ViT state dict may need: timm's ``fc_norm`` loaded as the final ``norm``, and a position embedding
made for another image size resampled to the configured patch grid.

The head count is not in the weights (``attn.qkv`` is (3·width, width) for any number of heads), so a file is
matched by width, depth, patch size and MLP ratio; the named sizes (``vit_tiny``, ``vit_small``, ``vit_base``)
have the standard head counts of DINO's and timm's ViTs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from bissl.errors import CheckpointError
from bissl.models import VIT_SIZES

_BLOCK = re.compile(r"blocks\.(\d+)\.")
_SIZE_LABELS = {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B"}
_SHOWN = 4


@dataclass(frozen=True)
class VitShape:
    """What the weights of a timm-named ViT tell: width, depth, patch side, MLP ratio, input channels and the
    number of position-embedding tokens (the CLS token's included)."""

    width: int
    depth: int
    patch: int
    mlp_ratio: float
    channels: int
    tokens: int

    @property
    def named(self) -> str | None:
        """The named size (``vit_small``, ...) of this width and depth, or None."""
        for name, (depth, width, _heads) in VIT_SIZES.items():
            if (depth, width) == (self.depth, self.width):
                return name
        return None

    def label(self) -> str:
        """``a ViT-S/16`` for a named size, else ``a ViT``."""
        return f"a {_SIZE_LABELS[self.named]}/{self.patch}" if self.named else "a ViT"

    def describe(self) -> str:
        return f"width {self.width}, depth {self.depth}, {self.patch}-pixel patches, MLP ratio {self.mlp_ratio:g}"


def is_vit_state(state: dict[str, Tensor]) -> bool:
    """Whether a backbone state dict has timm's ViT names (a CLS token, a position embedding, patch embedding
    or transformer blocks)."""
    return any(k in ("cls_token", "pos_embed") or k.startswith(("patch_embed.", "blocks.")) for k in state)


def vit_shape_of(state: dict[str, Tensor]) -> VitShape | None:
    """The shape of the ViT whose timm-named weights are ``state``; None when a tensor that tells it is absent."""
    proj = state.get("patch_embed.proj.weight")
    pos = state.get("pos_embed")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    depths = [int(m.group(1)) for k in state if (m := _BLOCK.match(k))]
    if proj is None or proj.ndim != 4 or pos is None or pos.ndim != 3 or fc1 is None or not depths:
        return None
    width = int(proj.shape[0])
    return VitShape(
        width=width,
        depth=max(depths) + 1,
        patch=int(proj.shape[-1]),
        mlp_ratio=int(fc1.shape[0]) / width,
        channels=int(proj.shape[1]),
        tokens=int(pos.shape[1]),
    )


def model_shape(backbone: nn.Module) -> VitShape:
    """The shape of a built ViT backbone (timm's ``VisionTransformer``)."""
    net: Any = backbone
    width = int(net.embed_dim)
    return VitShape(
        width=width,
        depth=len(net.blocks),
        patch=int(net.patch_embed.patch_size[0]),
        mlp_ratio=int(net.blocks[0].mlp.fc1.out_features) / width,
        channels=int(net.patch_embed.proj.in_channels),
        tokens=int(net.pos_embed.shape[1]),
    )


def _first(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def first_difference(mapped: dict[str, Tensor], expected: dict[str, Tensor]) -> tuple[str, int]:
    """The first key (in the model's order) that the checkpoint lacks or has in another shape, else the first
    key the model lacks, in words; and how many keys differ in all."""
    problems: list[str] = []
    for key, value in expected.items():
        if key not in mapped:
            problems.append(f"{key}: missing from the checkpoint")
        elif mapped[key].shape != value.shape:
            problems.append(f"{key}: checkpoint {list(mapped[key].shape)}, model {list(value.shape)}")
    problems += [f"{key}: not in the model" for key in mapped if key not in expected]
    return (problems[0] if problems else ""), len(problems)


def _settings(theirs: VitShape, mine: VitShape, image_size: int) -> list[str]:
    """The ``model.*`` settings that build the checkpoint's ViT instead of the configured one."""
    settings = []
    if (theirs.depth, theirs.width) != (mine.depth, mine.width):
        if theirs.named:
            settings.append(f"model.backbone={theirs.named}")
        else:
            settings.append(
                f"model.backbone=vit model.vit_width={theirs.width} model.vit_depth={theirs.depth} with its "
                "model.vit_heads (the weights do not record the head count)"
            )
    if theirs.patch != mine.patch:
        divides = "" if image_size % theirs.patch == 0 else " (and a data.image_size it divides)"
        settings.append(f"model.vit_patch_size={theirs.patch}{divides}")
    if theirs.mlp_ratio != mine.mlp_ratio:
        settings.append(f"model.vit_mlp_ratio={theirs.mlp_ratio:g}")
    return settings


def check_vit_shape(
    mapped: dict[str, Tensor], backbone: nn.Module, *, describe: str, configured: str, image_size: int
) -> None:
    """Refuse, in one line, a checkpoint ViT of another width, depth, patch size or MLP ratio than the configured
    ``backbone``: what the file holds, what is configured, the first differing key with both shapes, and the
    ``model.*`` settings that build the file's ViT."""
    theirs = vit_shape_of(mapped)
    if theirs is None:
        return  # no shape to tell: the key check names what is missing
    mine = model_shape(backbone)
    settings = _settings(theirs, mine, image_size)
    if not settings:
        return
    first, count = first_difference(mapped, backbone.state_dict())
    raise CheckpointError(
        f"{describe} holds {theirs.label()} ({theirs.describe()}), which does not fit model.backbone="
        f"{configured} ({mine.describe()}): {first} ({count} keys differ); set {' and '.join(settings)}"
    )


def _grid(tokens: int) -> int | None:
    """The side of the square patch grid of a position embedding with ``tokens`` entries and one CLS token."""
    side = math.isqrt(max(tokens - 1, 0))
    return side if side * side == tokens - 1 and side > 0 else None


def fit_position_embedding(
    mapped: dict[str, Tensor], backbone: nn.Module, *, describe: str, image_size: int, resample: bool
) -> tuple[dict[str, Tensor], str | None]:
    """``mapped`` with its ``pos_embed`` on the configured patch grid, and what was done (None: nothing).

    A checkpoint made at another image size (DINO's at 224 px, a config at 96 px) has a position embedding
    for another grid. With ``resample`` it is resampled (bicubic, antialiased: timm's
    ``resample_abs_pos_embed``, the CLS token's entry kept as it is); without, or when the file's embedding is
    not a CLS token plus a square grid, the import stops with one line naming ``data.image_size``."""
    pos = mapped.get("pos_embed")
    own: Any = backbone
    target = own.pos_embed
    if pos is None or pos.ndim != 3 or pos.shape == target.shape or pos.shape[-1] != target.shape[-1]:
        return mapped, None
    side = _grid(int(pos.shape[1]))
    rows, cols = (int(n) for n in own.patch_embed.grid_size)
    patch = int(own.patch_embed.patch_size[0])
    theirs = f"{side}x{side} patches, {side * patch} px" if side else f"{int(pos.shape[1])} tokens"
    shapes = (
        f"pos_embed: checkpoint {list(pos.shape)} ({theirs}), model {list(target.shape)} "
        f"({rows}x{cols} patches: data.image_size={image_size})"
    )
    if side is None:
        raise CheckpointError(
            f"{describe}: {shapes}; the file's position embedding is not a CLS token plus a square patch grid, "
            "so it cannot be resampled: check imported.layout"
        )
    if not resample:
        raise CheckpointError(
            f"{describe}: {shapes}; set data.image_size={side * patch}, or imported.resample_pos_embed=true to "
            "resample it to the configured grid"
        )
    from timm.layers import resample_abs_pos_embed

    resampled = resample_abs_pos_embed(
        pos.float(), new_size=[rows, cols], old_size=[side, side], num_prefix_tokens=1
    ).to(pos.dtype)
    done = (
        f"resampled pos_embed from {side}x{side} to {rows}x{cols} patches (bicubic, antialiased) for "
        f"data.image_size={image_size}; the file was made at {side * patch} px"
    )
    return {**mapped, "pos_embed": resampled}, done


def fc_norm_as_norm(mapped: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
    """A timm ViT saved with ``fc_norm`` (the final LayerNorm after pooling) and no ``norm``: its LayerNorm
    loaded as ``norm``, which bissl applies to every token before pooling: the same CLS feature, a different
    mean feature. Returns the state and a note (None when nothing was renamed)."""
    if "fc_norm.weight" not in mapped or "norm.weight" in mapped:
        return mapped, None
    renamed = {
        ("norm." + k.removeprefix("fc_norm.") if k.startswith("fc_norm.") else k): v
        for k, v in mapped.items()
    }
    note = (
        "loaded timm's fc_norm.* (the LayerNorm after pooling) as norm.* (before pooling): the same features "
        "with model.vit_pool=cls, while the mean of normalised tokens (model.vit_pool=mean) is not the file's "
        "normalised mean"
    )
    return renamed, note
