"""Checks of a built config: every value against its field's declared range, list shapes and orders, and
the rules that join several fields (solver and curvature settings, compare arms, device)."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args, get_origin

from bissl.config.bounds import RANGE, Range
from bissl.config.schema import BilevelConfig, Config, field_types
from bissl.errors import ConfigError


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


ITERATIVE_SOLVERS = ("cg", "minres", "neumann")
COMPARE_ARMS = ("baseline", "bissl")


def ranges(cls: Any = Config, prefix: str = "") -> dict[str, Range]:
    """Dotted key -> the declared :class:`Range` of every ranged field under the dataclass ``cls`` (default
    :class:`Config`); the fields of a list of dataclasses appear as ``section.list[i].field``."""
    hints = field_types(cls)
    found: dict[str, Range] = {}
    for item in dataclasses.fields(cls):
        tp = hints[item.name]
        if dataclasses.is_dataclass(tp):
            found.update(ranges(tp, prefix + item.name + "."))
        elif get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
            found.update(ranges(get_args(tp)[0], f"{prefix}{item.name}[i]."))
        elif RANGE in item.metadata:
            found[prefix + item.name] = item.metadata[RANGE]
    return found


def _check_ranges(node: Any, prefix: str = "") -> None:
    """Check every value of the dataclass instance ``node`` against its field's declared range."""
    for item in dataclasses.fields(node):
        value = getattr(node, item.name)
        key = prefix + item.name
        if dataclasses.is_dataclass(value):
            _check_ranges(value, key + ".")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for index, element in enumerate(value):
                _check_ranges(element, f"{key}[{index}].")
        elif RANGE in item.metadata and value is not None:
            item.metadata[RANGE].check(key, value)


def _check_pair(key: str, value: list[float]) -> None:
    """A [low, high] range (element ranges are checked before): two values, low <= high."""
    _check(
        len(value) == 2 and value[0] <= value[1],
        f"config key '{key}' must be [low, high] with low <= high, got {value}",
    )


def _check_shapes(config: Config) -> None:
    """List lengths and orders that the element ranges cannot express."""
    a = config.augment
    for key in ("crop_scale", "crop_ratio", "downstream_crop_scale"):
        _check_pair(f"augment.{key}", getattr(a, key))
    for key in ("blur_p", "solarize_p"):
        value = getattr(a, key)
        _check(
            len(value) == 2, f"config key 'augment.{key}' must be [view 1, view 2] (two values), got {value}"
        )
    _check(
        len(a.jitter) == 4,
        f"config key 'augment.jitter' must be [brightness, contrast, saturation, hue], got {a.jitter}",
    )
    _check(a.jitter[3] <= 0.5, f"config key 'augment.jitter[3]' (hue) must be in [0, 0.5], got {a.jitter[3]}")
    for key in ("lr_range", "weight_decay_range"):
        _check_pair(f"search.{key}", getattr(config.search, key))
    _check(len(config.model.blocks) >= 1, "config key 'model.blocks' must list at least one stage")
    arms = config.compare.arms
    for arm in arms:
        _check(
            arm in COMPARE_ARMS,
            f"config key 'compare.arms' got {arm!r}; allowed: {', '.join(COMPARE_ARMS)}",
        )
    _check(bool(arms), "config key 'compare.arms' is empty; list at least one of baseline, bissl")
    _check(
        len(set(arms)) == len(arms),
        f"config key 'compare.arms' names an arm twice, got {arms}; keep one of each",
    )


def _validate_curvature(b: BilevelConfig) -> None:
    """Solver, curvature, low-rank and adaptive-damping combinations (docs/implicit.md)."""
    _check(
        b.solver not in ITERATIVE_SOLVERS or b.solver_iterations >= 1,
        f"config key 'bilevel.solver_iterations' must be >= 1 for solver={b.solver}, got {b.solver_iterations}; "
        "use solver=identity for no solve",
    )
    _check(
        b.lowrank_method != "nystrom" or b.curvature == "ggn",
        "config key 'bilevel.lowrank_method' is nystrom, which needs PSD curvature: "
        "set bilevel.curvature=ggn or bilevel.lowrank_method=lanczos",
    )
    _check(
        b.curvature != "ggn" or b.hvp_mode != "forward-over-reverse",
        "config key 'bilevel.hvp_mode' must be reuse or recompute with bilevel.curvature=ggn, "
        f"got {b.hvp_mode}",
    )
    _check(
        not b.adaptive_damping or b.damping_max >= b.damping,
        f"config key 'bilevel.damping_max' must be >= bilevel.damping ({b.damping}) with adaptive damping, "
        f"got {b.damping_max}",
    )


def _validate_vit(config: Config) -> None:
    """A ViT backbone: its width splits into whole heads, its image into whole patches."""
    m = config.model
    if not m.backbone.startswith("vit"):
        return
    _check(
        m.backbone != "vit" or m.vit_width % m.vit_heads == 0,
        f"config key 'model.vit_width' ({m.vit_width}) must be a multiple of model.vit_heads ({m.vit_heads})",
    )
    size, patch = config.data.image_size, m.vit_patch_size
    _check(
        size % patch == 0,
        f"config key 'data.image_size' ({size}) must be a multiple of model.vit_patch_size ({patch}) "
        f"with model.backbone={m.backbone}; pick a patch size that divides it",
    )


def validate(config: Config) -> None:
    """Every value against its field's declared range, then list shapes and cross-field rules."""
    _check_ranges(config)
    _check_shapes(config)
    _validate_vit(config)
    _validate_curvature(config.bilevel)
    _check(
        not (config.pretext.method == "vicreg" and config.bilevel.curvature == "ggn"),
        "config key 'bilevel.curvature' is ggn, but pretext.method=vicreg has no convex split for Gauss–Newton "
        "curvature (its covariance term is quartic in the embeddings, its variance hinge is not convex); "
        "set bilevel.curvature=hessian",
    )
    _check(
        config.device == "auto" or config.device == "cpu" or config.device.startswith("cuda"),
        f"config key 'device' got {config.device!r}; allowed: auto, cpu, cuda, cuda:N",
    )
