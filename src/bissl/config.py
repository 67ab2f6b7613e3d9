"""Typed experiment configuration: dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every user mistake (unknown key, wrong type, value out of range) raises ConfigError with one line that
names the key and what is allowed. Every field carries a one-line attribute docstring (the string on the line
below it); ``bissl config show`` prints them beside the resolved values. Configs shipped with the package
(``src/bissl/configs``) are found by name: ``--config demo`` is ``configs/demo.yaml``.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from bissl.errors import ConfigError

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_SUFFIXES = (".yaml", ".yml")
CHANNEL_CHOICES = (1, 3)


@dataclass
class DataConfig:
    """Which data each stage uses and how it is prepared."""

    pretext: str = "fashion-mnist"
    """Dataset of the pretext task (labels unused); `bissl data list` shows every name, `folder:PATH` any image folder."""
    downstream: str = "digits"
    """Labelled dataset of the downstream task (warm-up, BiSSL upper level, fine-tuning, evaluation)."""
    root: str | None = None
    """Folder searched first for datasets (then $BISSL_DATA, then ~/.cache/bissl)."""
    download: bool = False
    """Download a missing dataset with torchvision (into root, else $BISSL_DATA, else ~/.cache/bissl)."""
    image_size: int = 28
    """Side in pixels every image is resized to on load; crops are made at this size."""
    channels: int | Literal["auto"] = "auto"
    """Input channels of the backbone: auto keeps each dataset's own (folder: sets of grey images load as 1); 1 or 3 converts."""
    pretext_limit: int | None = None
    """Keep a seeded random subset of this many pretext training images (null: all)."""
    downstream_limit: int | None = None
    """Keep a seeded random subset of this many downstream training images (null: all)."""
    val_fraction: float = 0.2
    """Share of the downstream training split held out for validation when the set has no official one."""
    split_seed: int = 0
    """Seed of the validation split and of the data limits (fixed across pipeline seeds)."""
    num_workers: int = 0
    """DataLoader workers that decode image files (sets read from disk, first decode of photo sets)."""
    in_memory: bool | Literal["auto"] = "auto"
    """Hold the decoded pretext set in memory (true), read it per batch from disk (false), or decide by size (auto: from disk when the decoded set would exceed 8 GiB)."""


@dataclass
class ModelConfig:
    """The backbone architecture shared by every stage."""

    backbone: Literal["small_resnet", "resnet18", "resnet34", "resnet50"] = "small_resnet"
    """Backbone: a small ResNet for CPUs or a torchvision ResNet (classifier removed)."""
    stem: Literal["imagenet", "small"] = "small"
    """Torchvision ResNets only: the 7x7/2 convolution + max-pool (imagenet) or a 3x3/1 convolution (small images)."""
    width: int = 16
    """small_resnet only: channels of the first stage (doubled at every further stage)."""
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    """small_resnet only: residual blocks per stage."""
    sync_bn: bool = False
    """Synchronise BatchNorm statistics across processes (SyncBatchNorm) in multi-process runs."""


@dataclass
class PretextConfig:
    """The self-supervised task (SPEC §5): SimCLR or BYOL with an MLP projector."""

    method: Literal["simclr", "byol"] = "simclr"
    """Pretext task: SimCLR (contrastive) or BYOL (predictor against an EMA target)."""
    temperature: float = 0.5
    """SimCLR: temperature of the contrastive softmax."""
    projector_hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of the projector MLP (each followed by BatchNorm and ReLU)."""
    projector_dim: int = 256
    """Output width of the projector."""
    predictor_hidden: list[int] = field(default_factory=lambda: [256])
    """BYOL: hidden widths of the predictor MLP."""
    ema: float = 0.9995
    """BYOL: decay of the target network's exponential moving average."""
    ema_schedule: Literal["constant", "cosine"] = "constant"
    """BYOL: keep the EMA decay constant, or raise it from ema to 1 along a cosine over the training steps."""
    head_hidden_bias: bool = False
    """Projector and predictor: hidden Linear layers carry a bias (cancelled by their BatchNorm in training mode; the authors' code has one)."""
    head_output_bias: bool = True
    """Projector and predictor: the output Linear layer carries a bias (the authors' has none)."""
    projector_warmup_steps: int = 0
    """bilevel: LARS steps that train the pretext head on the frozen backbone before the alternations (needed when the pretext checkpoint was imported without a projector)."""
    projector_warmup_lr: float = 1.0
    """bilevel: peak LARS learning rate of the projector warm-up (10% linear warm-up, then cosine to bilevel.lower_final_lr_ratio of it)."""


@dataclass
class AugmentConfig:
    """Two-view augmentations (SPEC §5) and downstream crops."""

    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    """Pretext views: area fraction range [low, high] of the random resized crop."""
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    """Pretext views: aspect ratio range [low, high] of the random resized crop."""
    reference_crop: bool = False
    """Reproduce the reference's crop quirk: aspect ratio range (0.5, 1.0) in place of crop_ratio."""
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])
    """Colour jitter strengths: brightness, contrast, saturation, hue."""
    jitter_p: float = 0.8
    """Probability of the colour jitter in each view."""
    grayscale_p: float = 0.2
    """Probability of turning a colour view grey."""
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1])
    """Gaussian blur probability of view 1 and view 2."""
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.2])
    """Solarisation probability of view 1 and view 2."""
    flip_p: float = 0.5
    """Horizontal flip probability (pretext views)."""
    downstream_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    """Downstream training: area fraction range of the random resized crop."""


@dataclass
class PretrainConfig:
    """Pretext pretraining with LARS and a per-step warm-up + cosine schedule."""

    epochs: int = 500
    """Pretraining epochs over the pretext set (ignored when steps is set)."""
    steps: int | None = None
    """Total optimiser steps, in place of epochs (null: epochs x batches per epoch)."""
    batch_size: int = 1024
    """Images per step (global: split across processes)."""
    lr: float = 4.8
    """Peak LARS learning rate (not scaled by the batch size)."""
    weight_decay: float = 1e-6
    """LARS weight decay."""
    momentum: float = 0.9
    """LARS momentum."""
    warmup_epochs: float = 10.0
    """Linear learning-rate warm-up, in epochs, before the cosine decay."""
    final_lr_ratio: float = 0.0
    """Learning rate at the end of the cosine, as a fraction of the peak."""
    lars_eta: float = 0.001
    """LARS trust coefficient."""
    lars_exclude_bias_norm: bool = True
    """Exempt biases and normalisation parameters from weight decay and the trust ratio."""
    clip_grad: float | None = None
    """Clip the gradient norm at this value (null: no clipping)."""
    log_every: int = 10
    """Steps between lines in metrics.jsonl."""
    checkpoint_every: int = 500
    """Steps between checkpoints (a run also checkpoints when stopped and at the end)."""
    knn_every: int = 0
    """Steps between k-NN accuracy checks of frozen features on the pretext set's labelled splits (0: once, at the end)."""
    knn_k: int = 20
    """Neighbours that vote in the pretraining k-NN monitor."""
    knn_temperature: float = 0.07
    """Temperature of the k-NN monitor's similarity weights."""
    init_checkpoint: str | None = None
    """A pretext checkpoint to continue from (backbone and pretext head) instead of a random start."""


@dataclass
class WarmupConfig:
    """Downstream head warm-up on the frozen pretext backbone (SPEC §4.2)."""

    epochs: int = 20
    """Epochs of head training on the frozen backbone."""
    lr: float | None = None
    """SGD learning rate (null: bilevel.upper_lr)."""
    weight_decay: float | None = None
    """SGD weight decay (null: bilevel.upper_weight_decay)."""
    momentum: float = 0.9
    """SGD momentum."""
    batch_size: int = 256
    """Labelled images per step."""
    backbone_bn_mode: Literal["train", "eval"] = "train"
    """BatchNorm mode of the frozen backbone: train adapts its statistics to the downstream data, as the reference does."""


@dataclass
class BilevelConfig:
    """The alternating BiSSL stage (SPEC §2–4). Defaults are the published v4 settings."""

    alternations: int = 500
    """Alternations of a lower phase and an upper phase."""
    lower_steps: int = 20
    """Pretext (lower-level) optimiser steps per alternation."""
    upper_steps: int = 8
    """Downstream (upper-level) optimiser steps per alternation."""
    lam: float = 1e-3
    """λ: weight of the proximal term (λ/2)||θ_P − θ_D||² that ties the lower backbone to the upper one."""
    damping: float = 10.0
    """δ: added to λ inside the inverse only, so the solved system is x + Hx/(λ+δ) = v."""
    gamma: float = 1.0
    """γ: weight of the upper backbone's own downstream gradient in the upper objective."""
    solver: Literal["cg", "minres", "neumann", "lowrank", "exact", "identity"] = "cg"
    """Linear solver for (I + H/(λ+δ)) x = v: cg, minres, neumann, lowrank, exact (tiny models), identity (first order)."""
    cg_iterations: int = 5
    """Iterations (CG) or series terms (Neumann) per solve."""
    layerwise: bool = True
    """CG with per-tensor step sizes, as the reference runs it; false: textbook CG over the whole vector."""
    tolerance: float = 0.0
    """Stop a solve early when the relative residual falls below this (0: always run every iteration)."""
    neumann_scale: float = 1.0
    """Neumann series step c in x = c Σ (I − cA)^k v."""
    warm_start: bool = False
    """Start each upper step's solve from the previous step's solution."""
    hvp_mode: Literal["reuse", "recompute", "forward-over-reverse"] = "reuse"
    """Hessian-vector products: reuse one gradient graph, rebuild it per product (reference), or forward-over-reverse."""
    hvp_scope: Literal["phase", "step"] = "phase"
    """With reuse: build the gradient graph once per alternation (phase) or once per upper step (less memory)."""
    hvp_update_bn_stats: bool = False
    """Let Hessian-vector products update the lower backbone's BatchNorm running statistics, as the reference does."""
    hessian_batch_size: int | None = None
    """Pretext images in the Hessian batch (null: lower_batch_size)."""
    lower_batch_size: int = 256
    """Pretext images per lower step."""
    upper_batch_size: int = 256
    """Labelled images per upper step."""
    lower_lr: float = 1.0
    """Peak LARS learning rate of the lower level."""
    lower_weight_decay: float = 1e-6
    """LARS weight decay of the lower level."""
    lower_momentum: float = 0.9
    """LARS momentum of the lower level."""
    lower_warmup_steps: int = 200
    """Linear warm-up of the lower learning rate, in lower steps, before its cosine over all lower steps."""
    lower_final_lr_ratio: float = 0.001
    """Lower learning rate at the end of the cosine, as a fraction of the peak."""
    upper_lr: float = 0.03
    """Peak SGD learning rate of the upper level (cosine over all upper steps, no warm-up)."""
    upper_weight_decay: float = 1e-3
    """SGD weight decay of the upper level."""
    upper_momentum: float = 0.9
    """SGD momentum of the upper level."""
    upper_final_lr_ratio: float = 0.001
    """Upper learning rate at the end of the cosine, as a fraction of the peak."""
    clip_grad: float = 10.0
    """Gradient norm clip of each lower step and of each joint upper gradient."""
    eval_every: int = 0
    """Alternations between validation evaluations of the upper backbone and head (0: never)."""
    upper_bn: Literal["refresh", "running"] = "refresh"
    """BatchNorm statistics of the upper backbone for validation and upper_backbone.pt: refresh (recomputed by one pass over the downstream training split at the current weights) or running (the averages the upper steps left, which trail the weights)."""
    checkpoint_every: int = 10
    """Alternations between checkpoints."""
    lower_lars_exclude_bias_norm: bool | None = None
    """Lower-level LARS leaves biases and norm parameters without weight decay and trust ratio (null: as pretrain.lars_exclude_bias_norm)."""
    curvature: Literal["hessian", "ggn"] = "hessian"
    """Curvature in the implicit system: the pretext Hessian, or its Gauss–Newton part (PSD)."""
    lowrank_rank: int = 10
    """solver=lowrank: rank k of the basis built once per upper phase (k products)."""
    lowrank_method: Literal["lanczos", "nystrom"] = "lanczos"
    """solver=lowrank: how the basis is built; nystrom needs PSD curvature (curvature=ggn)."""
    lowrank_negative: Literal["clip", "abs", "keep"] = "clip"
    """solver=lowrank: treatment of eigenvalue estimates at or below −(λ+δ): clip to 0, abs, or keep."""
    lowrank_refine: Literal["none", "cg", "minres"] = "none"
    """solver=lowrank: none applies the low-rank inverse; cg or minres refine it, preconditioned by it."""
    lowrank_refine_iterations: int = 2
    """solver=lowrank with refinement: CG/MINRES iterations (products) per upper step."""
    diagnose_every: int = 0
    """Log curvature diagnostics every N alternations, starting with the first (0: off)."""
    diagnose_steps: int = 20
    """Lanczos steps (products) behind the diagnostics and the adaptive damping estimate."""
    adaptive_damping: bool = False
    """Raise δ per alternation until λ_min(I + H/(λ+δ)) >= damping_margin (from a Lanczos estimate)."""
    damping_margin: float = 0.1
    """adaptive_damping: the smallest eigenvalue of I + H/(λ+δ) to reach, in (0, 1)."""
    damping_max: float = 1.0e4
    """adaptive_damping: the largest δ it may use."""


@dataclass
class FinetuneConfig:
    """Full fine-tuning of a backbone with a fresh linear head (SPEC §4.4)."""

    epochs: int = 400
    """Fine-tuning epochs."""
    batch_size: int = 256
    """Labelled images per step."""
    lr: float = 0.01
    """Peak SGD learning rate (cosine schedule); the search draws its own."""
    weight_decay: float = 1e-4
    """SGD weight decay; the search draws its own."""
    momentum: float = 0.9
    """SGD momentum."""
    final_lr_ratio: float = 0.0
    """Learning rate at the end of the cosine, as a fraction of the peak (the authors': 0.001)."""
    eval_every: int = 1
    """Epochs between validation and test evaluations."""
    checkpoint_every: int = 1
    """Epochs between checkpoints."""


@dataclass
class SearchConfig:
    """Hyper-parameter search over lr and weight decay, then seeds at the best setting."""

    trials: int = 100
    """Fine-tuning trials of the search."""
    sampler: Literal["random", "tpe"] = "random"
    """Optuna sampler: random (as the paper) or TPE."""
    lr_range: list[float] = field(default_factory=lambda: [1e-4, 1.0])
    """Learning-rate range [low, high], sampled log-uniformly."""
    weight_decay_range: list[float] = field(default_factory=lambda: [1e-5, 1e-2])
    """Weight-decay range [low, high], sampled log-uniformly."""
    storage: str | None = None
    """Optuna storage URL shared across machines (null: SQLite study.db in the run folder)."""
    study_name: str = "finetune"
    """Study name prefix; a hash of the search problem is appended."""
    epochs: int | None = None
    """Epochs of each trial (null: finetune.epochs)."""
    seeds: int = 10
    """Fine-tuning seeds run at the best setting."""
    folds: int = 1
    """Score each trial by k-fold cross-validation over the labelled pool (training + validation split), the mean of k fine-tunes (1: the validation split alone, as the paper)."""


@dataclass
class EvalConfig:
    """Alignment analyses of frozen features."""

    knn_k: int = 20
    """Neighbours that vote in the k-NN probe."""
    knn_temperature: float = 0.07
    """Temperature of the k-NN probe's similarity weights."""
    probe_epochs: int = 100
    """Training epochs of the linear probe."""
    tsne_samples: int = 1000
    """Downstream images embedded by t-SNE."""
    batch_size: int = 512
    """Images per batch when extracting features."""


@dataclass
class CompareConfig:
    """Baseline against BiSSL from one pretext checkpoint (SPEC §4.5)."""

    fairness: Literal["same-checkpoint", "extra-pretext"] = "same-checkpoint"
    """Both arms from one pretext checkpoint, or the baseline gets extra pretext steps matching BiSSL's lower steps (v1)."""
    arms: list[str] = field(default_factory=lambda: ["baseline", "bissl"])
    """Arms to run: baseline, bissl."""


@dataclass
class ImportConfig:
    """`bissl import`: a public SSL checkpoint turned into a pretext checkpoint."""

    layout: Literal["torchvision", "timm", "solo-learn", "lightly", "bissl-reference"] | None = None
    """Key layout of the checkpoint: torchvision or timm ResNet state dict, solo-learn or lightly checkpoint, or the BiSSL authors' pretext files."""
    checkpoint: str | None = None
    """The checkpoint file (backbone weights, with the projector when the release holds one)."""
    head: str | None = None
    """bissl-reference only: the separate head file (projector, BYOL predictor) released beside the backbone."""
    projector: bool = True
    """Import the release's projector (and BYOL predictor) when it holds one that fits pretext.*; false leaves the head untrained."""
    trust_pickle: bool = False
    """Load a checkpoint that pickles Python objects besides tensors (Lightning hyper-parameters); only for files you trust."""


@dataclass
class LoggingConfig:
    """Where a run's metrics go besides metrics.jsonl."""

    tensorboard: bool = False
    """Also write every metric as TensorBoard scalars next to metrics.jsonl (needs `pip install bissl[tensorboard]`)."""


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
    seeds: int | None = None
    """Run this arm at the first N pipeline seeds only (null: all of them); for secondary arms."""
    own_search: bool = True
    """Search this arm's own fine-tuning setting (the paper's protocol); false: with study.shared_hyperparameters, fine-tune it at the reference arm's setting only."""


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
    shared_hyperparameters: bool = False
    """Also fine-tune every other arm at the setting the reference arm's search chose at the same pipeline seed (folder finetune-shared): the backbone's effect without its own search's luck."""
    primary_arm: str | None = None
    """The arm of the pre-registered hypotheses: H1 it beats the reference, H2 it beats the matched-compute (extra_pretext) arm; one-sided paired t-tests, Holm over the two (null: every comparison is exploratory)."""


@dataclass
class Config:
    """A whole experiment. Stage sections are read by the command that runs that stage."""

    seed: int = 0
    """Seed of every random draw in the run (data order, augmentations, initialisation)."""
    device: str = "auto"
    """auto (this process's GPU if there is one, else the CPU), cpu, cuda or cuda:N."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast precision of forward and backward passes."""
    hvp_precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast precision of the Hessian-vector products."""
    channels_last: bool = False
    """Store convolution weights and inputs as NHWC (faster on GPU tensor cores)."""
    max_nonfinite: int = 5
    """Consecutive non-finite losses or gradients skipped before the run stops."""
    pretext_checkpoint: str | None = None
    """Pretext checkpoint read by warmup and bilevel (compare: skip pretraining and start from it)."""
    backbone: str | None = None
    """Backbone weights for finetune, search and evaluate (null: a randomly initialised backbone)."""
    head_checkpoint: str | None = None
    """Warmed-up downstream head for bilevel (null: bilevel runs the head warm-up itself)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets and their preparation."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone architecture."""
    pretext: PretextConfig = field(default_factory=PretextConfig)
    """Pretext task and head."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentations."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Pretext pretraining."""
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    """Downstream head warm-up."""
    bilevel: BilevelConfig = field(default_factory=BilevelConfig)
    """The BiSSL stage."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """Hyper-parameter search."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Frozen-feature analyses."""
    compare: CompareConfig = field(default_factory=CompareConfig)
    """Baseline against BiSSL."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metric outputs."""
    imported: ImportConfig = field(default_factory=ImportConfig)
    """`bissl import`: the public checkpoint to convert."""
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


def shipped_configs() -> dict[str, Path]:
    """The configs shipped inside the package, by name (file name without .yaml), sorted."""
    if not SHIPPED_CONFIGS.is_dir():
        return {}
    files = sorted(p for p in SHIPPED_CONFIGS.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    return {p.stem: p for p in files}


def is_config_name(text: str) -> bool:
    """A config argument without a folder and without a YAML suffix is the name of a shipped config."""
    return "/" not in text and "\\" not in text and not text.endswith(CONFIG_SUFFIXES)


def resolve_config(path_or_name: str | Path) -> Path:
    """The YAML file a ``--config`` argument means: a shipped config for a bare name (``demo``), else a path.

    A bare name that matches no shipped config but names an existing file is that file."""
    text = str(path_or_name)
    if is_config_name(text):
        shipped = shipped_configs()
        if text in shipped:
            return shipped[text]
        if Path(text).is_file():
            return Path(text)
        raise ConfigError(
            f"unknown config name '{text}'; shipped configs: {', '.join(shipped) or 'none'} "
            "(or give the path of a YAML file)"
        )
    file = Path(text)
    if not file.is_file():
        raise ConfigError(
            f"config file '{file}' does not exist; pass --config a YAML file or a shipped name "
            "('bissl configs' lists them)"
        )
    return file


def config_description(path: Path) -> str:
    """A config file's one-line description: the first sentence of its leading comment block."""
    lines: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        text = stripped.lstrip("#").strip()
        if not text:
            if lines:
                break
            continue
        lines.append(text)
    joined = " ".join(lines)
    cut = joined.find(". ")
    return joined[: cut + 1] if cut >= 0 else joined


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate.

    ``path`` is a YAML file or the name of a shipped config (see :func:`resolve_config`)."""
    data: dict[str, Any] = {}
    if path is not None:
        file = resolve_config(path)
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


ITERATIVE_SOLVERS = ("cg", "minres", "neumann")


def _validate_curvature(b: BilevelConfig) -> None:
    """Solver, curvature, low-rank, diagnostics and adaptive-damping knobs (docs/implicit.md)."""
    _check(
        b.solver not in ITERATIVE_SOLVERS or b.cg_iterations >= 1,
        f"config key 'bilevel.cg_iterations' must be >= 1 for solver={b.solver}, got {b.cg_iterations}; "
        "use solver=identity for no solve",
    )
    for key in ("lowrank_rank", "lowrank_refine_iterations", "diagnose_steps"):
        value = getattr(b, key)
        _check(value >= 1, f"config key 'bilevel.{key}' must be >= 1, got {value}")
    _check(
        b.diagnose_every >= 0,
        f"config key 'bilevel.diagnose_every' must be >= 0 (0: off), got {b.diagnose_every}",
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
        0 < b.damping_margin < 1,
        f"config key 'bilevel.damping_margin' must be in (0, 1), got {b.damping_margin}",
    )
    _check(
        not b.adaptive_damping or b.damping_max >= b.damping,
        f"config key 'bilevel.damping_max' must be >= bilevel.damping ({b.damping}) with adaptive damping, "
        f"got {b.damping_max}",
    )


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
    _validate_curvature(b)
    _check(
        config.pretext.projector_warmup_steps >= 0,
        f"config key 'pretext.projector_warmup_steps' must be >= 0, got {config.pretext.projector_warmup_steps}",
    )
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
    _check(config.search.folds >= 1, f"config key 'search.folds' must be >= 1, got {config.search.folds}")
    for key in ("lr_range", "weight_decay_range"):
        low_high = getattr(config.search, key)
        _check(
            len(low_high) == 2 and 0 < low_high[0] <= low_high[1],
            f"config key 'search.{key}' must be [low, high] with 0 < low <= high, got {low_high}",
        )
    _check(
        config.data.channels in ("auto", *CHANNEL_CHOICES),
        f"config key 'data.channels' must be auto, 1 or 3, got {config.data.channels!r}",
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


@cache
def attribute_docstrings() -> dict[str, dict[str, str]]:
    """Class name -> field name -> the string literal on the line below that field, read from this module's
    source with ``ast`` (the source ships with the package, so this works from a wheel too)."""
    tree = ast.parse(Path(__file__).read_text())
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        for statement, following in zip(node.body, node.body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
        found[node.name] = docs
    return found


def _walk_fields(cls: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, type, description) of every leaf field of the dataclass ``cls``, in declaration order."""
    hints = _field_types(cls)
    docs = attribute_docstrings().get(cls.__name__, {})
    rows: list[tuple[str, Any, str]] = []
    for item in dataclasses.fields(cls):
        tp = hints[item.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(_walk_fields(tp, prefix + item.name + "."))
        else:
            rows.append((prefix + item.name, tp, docs.get(item.name, "")))
    return rows


def field_descriptions() -> dict[str, str]:
    """Dotted key -> one-line description, for every leaf key of :class:`Config` (empty when undocumented)."""
    return {key: doc for key, _, doc in _walk_fields(Config)}


def section_descriptions() -> dict[str, str]:
    """Section name (``bilevel``) -> the description of its field in :class:`Config`."""
    docs = attribute_docstrings()["Config"]
    hints = _field_types(Config)
    return {name: docs.get(name, "") for name, tp in hints.items() if dataclasses.is_dataclass(tp)}


def flatten(config: Config) -> dict[str, Any]:
    """Dotted key -> value, for every leaf key of the config."""
    flat: dict[str, Any] = {}

    def visit(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                visit(value, prefix + key + ".")
            else:
                flat[prefix + key] = value

    visit(to_dict(config), "")
    return flat


def format_value(value: Any) -> str:
    """A value as it is written in an override (``null``, ``true``, ``[1, 2]``, ``0.001``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def describe_config(config: Config, sections: list[str] | None = None) -> str:
    """Every resolved key with its value and description, grouped by section under a ``# section`` line.

    ``sections`` keeps only keys that equal or lie under one of the given names (``bilevel``, ``data.channels``);
    an unknown name raises ConfigError listing the sections."""
    values = flatten(config)
    descriptions = field_descriptions()
    keys = list(values)
    if sections:
        for wanted in sections:
            if not any(key == wanted or key.startswith(wanted + ".") for key in keys):
                names = ", ".join(section_descriptions())
                raise ConfigError(f"config has no key or section '{wanted}'; sections: {names}")
        keys = [k for k in keys if any(k == w or k.startswith(w + ".") for w in sections)]
    shown = {key: format_value(values[key]) for key in keys}
    key_width = max((len(k) for k in keys), default=0)
    value_width = min(max((len(v) for v in shown.values()), default=0), 24)
    section_docs = section_descriptions()
    lines: list[str] = []
    current: str | None = None
    for key in keys:
        section = key.split(".", 1)[0] if "." in key else ""
        if section != current:
            current = section
            title = f"# {section}: {section_docs.get(section, '')}" if section else "# top level"
            lines.extend([""] if lines else [])
            lines.append(title)
        lines.append(f"{key:<{key_width}}  {shown[key]:<{value_width}}  {descriptions.get(key, '')}".rstrip())
    return "\n".join(lines)
