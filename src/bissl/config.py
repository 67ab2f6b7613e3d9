"""Typed experiment configuration: dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every user mistake (unknown key, wrong type, value out of range) raises ConfigError with one line that
names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from bissl.errors import ConfigError


@dataclass
class DataConfig:
    """Which data each stage uses and how it is prepared."""

    pretext: str = "fashion-mnist"
    downstream: str = "digits"
    root: str | None = None
    download: bool = False
    image_size: int = 28
    pretext_limit: int | None = None
    downstream_limit: int | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    num_workers: int = 0
    in_memory: bool | Literal["auto"] = "auto"


@dataclass
class ModelConfig:
    """The backbone architecture shared by every stage."""

    backbone: Literal["small_resnet", "resnet18", "resnet34", "resnet50"] = "small_resnet"
    stem: Literal["imagenet", "small"] = "small"
    width: int = 16
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    sync_bn: bool = False


@dataclass
class PretextConfig:
    """The self-supervised task (SPEC §5): SimCLR or BYOL with an MLP projector."""

    method: Literal["simclr", "byol"] = "simclr"
    temperature: float = 0.5
    projector_hidden: list[int] = field(default_factory=lambda: [256, 256])
    projector_dim: int = 256
    predictor_hidden: list[int] = field(default_factory=lambda: [256])
    ema: float = 0.9995
    ema_schedule: Literal["constant", "cosine"] = "constant"


@dataclass
class AugmentConfig:
    """Two-view augmentations (SPEC §5) and downstream crops."""

    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    reference_crop: bool = False
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1])
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.2])
    flip_p: float = 0.5
    downstream_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])


@dataclass
class PretrainConfig:
    """Pretext pretraining with LARS and a per-step warm-up + cosine schedule."""

    epochs: int = 500
    steps: int | None = None
    batch_size: int = 1024
    lr: float = 4.8
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    final_lr_ratio: float = 0.0
    lars_eta: float = 0.001
    lars_exclude_bias_norm: bool = True
    clip_grad: float | None = None
    log_every: int = 10
    checkpoint_every: int = 500
    knn_every: int = 0
    knn_k: int = 20
    knn_temperature: float = 0.07
    init_checkpoint: str | None = None
    """A pretext checkpoint to continue from (backbone and pretext head) instead of a random start."""


@dataclass
class WarmupConfig:
    """Downstream head warm-up on the frozen pretext backbone (SPEC §4.2)."""

    epochs: int = 20
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    batch_size: int = 256
    backbone_bn_mode: Literal["train", "eval"] = "train"


@dataclass
class BilevelConfig:
    """The alternating BiSSL stage (SPEC §2–4). Defaults are the published v4 settings."""

    alternations: int = 500
    lower_steps: int = 20
    upper_steps: int = 8
    lam: float = 1e-3
    damping: float = 10.0
    gamma: float = 1.0
    solver: Literal["cg", "neumann", "exact", "identity"] = "cg"
    cg_iterations: int = 5
    layerwise: bool = True
    tolerance: float = 0.0
    neumann_scale: float = 1.0
    warm_start: bool = False
    hvp_mode: Literal["reuse", "recompute", "forward-over-reverse"] = "reuse"
    hvp_scope: Literal["phase", "step"] = "phase"
    hvp_update_bn_stats: bool = False
    hessian_batch_size: int | None = None
    lower_batch_size: int = 256
    upper_batch_size: int = 256
    lower_lr: float = 1.0
    lower_weight_decay: float = 1e-6
    lower_momentum: float = 0.9
    lower_warmup_steps: int = 200
    lower_final_lr_ratio: float = 0.001
    upper_lr: float = 0.03
    upper_weight_decay: float = 1e-3
    upper_momentum: float = 0.9
    upper_final_lr_ratio: float = 0.001
    clip_grad: float = 10.0
    eval_every: int = 0
    checkpoint_every: int = 10


@dataclass
class FinetuneConfig:
    """Full fine-tuning of a backbone with a fresh linear head (SPEC §4.4)."""

    epochs: int = 400
    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    eval_every: int = 1
    checkpoint_every: int = 1


@dataclass
class SearchConfig:
    """Hyper-parameter search over lr and weight decay, then seeds at the best setting."""

    trials: int = 100
    sampler: Literal["random", "tpe"] = "random"
    lr_range: list[float] = field(default_factory=lambda: [1e-4, 1.0])
    weight_decay_range: list[float] = field(default_factory=lambda: [1e-5, 1e-2])
    storage: str | None = None
    study_name: str = "finetune"
    epochs: int | None = None
    seeds: int = 10


@dataclass
class EvalConfig:
    """Alignment analyses of frozen features."""

    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_epochs: int = 100
    tsne_samples: int = 1000
    batch_size: int = 512


@dataclass
class CompareConfig:
    """Baseline against BiSSL from one pretext checkpoint (SPEC §4.5)."""

    fairness: Literal["same-checkpoint", "extra-pretext"] = "same-checkpoint"
    arms: list[str] = field(default_factory=lambda: ["baseline", "bissl"])


@dataclass
class StudyArm:
    """One arm of ``bissl study``: where its backbone comes from, and config overrides of its own."""

    name: str = ""
    """The arm's name: its folder under the study's --out and its label in tables."""
    init: Literal["pretrained", "random"] = "pretrained"
    """Start from the study's pretext checkpoint, or fine-tune a randomly initialised backbone."""
    extra_pretext: bool = False
    """Continue pretext training from the checkpoint for bilevel.alternations × bilevel.lower_steps steps
    with the lower level's optimiser (matched compute), then fine-tune that backbone."""
    bilevel: bool = False
    """Run the head warm-up and the BiSSL stage, then fine-tune its lower backbone."""
    overrides: list[str] = field(default_factory=list)
    """Dotted key=value overrides of this arm only, applied after everything else (e.g. bilevel.lam=0.01)."""


@dataclass
class StudyConfig:
    """``bissl study``: named arms × pipeline seeds from one pretext checkpoint (docs/evidence.md)."""

    arms: list[StudyArm] = field(default_factory=list)
    """The arms, in table order; names are unique."""
    reference: str = "baseline"
    """The arm every other arm is compared against."""
    pipeline_seeds: list[int] = field(default_factory=lambda: [100, 200, 300])
    """One run of every arm per seed; the seed sets ``seed`` after pretraining (warm-up, BiSSL stage,
    search, and fine-tuning seeds seed, seed + 1, …)."""
    bn_control: bool = True
    """Also probe the reference backbone with BatchNorm statistics recalibrated by the head warm-up."""


@dataclass
class Config:
    """A whole experiment. Stage sections are read by the command that runs that stage."""

    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    hvp_precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    max_nonfinite: int = 5
    pretext_checkpoint: str | None = None
    backbone: str | None = None
    head_checkpoint: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    bilevel: BilevelConfig = field(default_factory=BilevelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    """The arms and seeds of ``bissl study`` (read by that command only)."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"config key '{key}' got {value!r}; allowed values: {', '.join(map(str, allowed))}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' got {value!r}; expected {_type_name(tp)}")
    if origin is list:
        (item_type,) = get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' got {value!r}; expected {_type_name(tp)}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return _from_dict(tp, value, prefix=key + ".")
    raise ConfigError(f"config key '{key}' got {value!r}; expected {_type_name(tp)}")


def _field_types(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; allowed keys in {where}: {', '.join(sorted(hints))}"
            )
        kwargs[key] = _coerce(prefix + key, value, hints[key])
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """Parse an override value with YAML rules (so 1e-3 is a float, true a bool, [1,2] a list)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (validated later against the dataclasses)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (for example pretext.temperature=0.2)"
            )
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(
                f"config file '{file}' does not exist; pass --config with a YAML file (see configs/)"
            )
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file '{file}' is not valid YAML{where}; fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file '{file}' must hold a mapping of sections, not {type(loaded).__name__}"
            )
        data = loaded
    data = apply_overrides(data, overrides or [])
    config: Config = _from_dict(Config, data)
    validate(config)
    return config


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: Config) -> None:
    """Range checks that the types alone cannot express."""
    b = config.bilevel
    _check(b.lam > 0, f"config key 'bilevel.lam' must be > 0, got {b.lam}")
    _check(b.damping >= 0, f"config key 'bilevel.damping' must be >= 0, got {b.damping}")
    _check(b.gamma >= 0, f"config key 'bilevel.gamma' must be >= 0, got {b.gamma}")
    for key in ("alternations", "lower_steps", "upper_steps", "lower_batch_size", "upper_batch_size"):
        value = getattr(b, key)
        _check(value >= 1, f"config key 'bilevel.{key}' must be >= 1, got {value}")
    _check(b.cg_iterations >= 0, f"config key 'bilevel.cg_iterations' must be >= 0, got {b.cg_iterations}")
    _check(b.tolerance >= 0, f"config key 'bilevel.tolerance' must be >= 0, got {b.tolerance}")
    _check(
        0 < config.data.val_fraction < 1,
        f"config key 'data.val_fraction' must be in (0, 1), got {config.data.val_fraction}",
    )
    _check(
        config.data.image_size >= 4,
        f"config key 'data.image_size' must be >= 4, got {config.data.image_size}",
    )
    _check(
        config.pretext.temperature > 0,
        f"config key 'pretext.temperature' must be > 0, got {config.pretext.temperature}",
    )
    _check(
        0 <= config.pretext.ema <= 1, f"config key 'pretext.ema' must be in [0, 1], got {config.pretext.ema}"
    )
    _check(
        config.pretrain.batch_size >= 2,
        f"config key 'pretrain.batch_size' must be >= 2, got {config.pretrain.batch_size}",
    )
    _check(config.pretrain.lr > 0, f"config key 'pretrain.lr' must be > 0, got {config.pretrain.lr}")
    _check(
        config.finetune.epochs >= 1,
        f"config key 'finetune.epochs' must be >= 1, got {config.finetune.epochs}",
    )
    _check(
        config.finetune.batch_size >= 1,
        f"config key 'finetune.batch_size' must be >= 1, got {config.finetune.batch_size}",
    )
    _check(config.search.trials >= 1, f"config key 'search.trials' must be >= 1, got {config.search.trials}")
    _check(config.search.seeds >= 1, f"config key 'search.seeds' must be >= 1, got {config.search.seeds}")
    for key in ("lr_range", "weight_decay_range"):
        low_high = getattr(config.search, key)
        _check(
            len(low_high) == 2 and 0 < low_high[0] <= low_high[1],
            f"config key 'search.{key}' must be [low, high] with 0 < low <= high, got {low_high}",
        )
    _check(len(config.model.blocks) >= 1, "config key 'model.blocks' must list at least one stage")
    _check(config.model.width >= 1, f"config key 'model.width' must be >= 1, got {config.model.width}")
    _check(config.max_nonfinite >= 1, f"config key 'max_nonfinite' must be >= 1, got {config.max_nonfinite}")
    for name in ("arms",):
        for arm in getattr(config.compare, name):
            _check(
                arm in ("baseline", "bissl"),
                f"config key 'compare.arms' got {arm!r}; allowed: baseline, bissl",
            )
    _check(
        config.device == "auto" or config.device == "cpu" or config.device.startswith("cuda"),
        f"config key 'device' got {config.device!r}; allowed: auto, cpu, cuda, cuda:N",
    )


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts (for YAML and JSON)."""
    return dataclasses.asdict(config)


def dump_yaml(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (used when a checkpoint carries its config)."""
    config: Config = _from_dict(Config, data)
    validate(config)
    return config
