"""Typed experiment configuration: dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every user mistake (unknown key, wrong type, value out of range) raises ConfigError with one line that
names the key and what is allowed; every numeric field declares its allowed values in its metadata
(:class:`Range`, through ``at_least``, ``above``, ``within``, ``one_of``), checked at load time. Every field
carries a one-line attribute docstring (the string on the line below it); ``bissl config show`` prints them
beside the resolved values. Configs shipped with the package (``src/bissl/configs``) are found by name:
``--config demo`` is ``configs/demo.yaml``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from bissl.errors import ConfigError

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_SUFFIXES = (".yaml", ".yml")
CHANNEL_CHOICES = (1, 3)
RANGE = "range"
"""Key of a field's ``metadata`` that holds its :class:`Range`."""


@dataclass(frozen=True)
class Range:
    """The values a numeric config field may take (each element, for a list of numbers).

    Bounds are inclusive unless marked open; ``choices`` lists the only allowed values instead. A float is
    always required to be finite."""

    low: int | float | None = None
    """The smallest allowed value (null: no lower bound)."""
    high: int | float | None = None
    """The largest allowed value (null: no upper bound)."""
    low_open: bool = False
    """The lower bound itself is excluded."""
    high_open: bool = False
    """The upper bound itself is excluded."""
    choices: tuple[int, ...] = ()
    """The only allowed values, in place of bounds (empty: bounds apply)."""
    note: str = ""
    """Added in parentheses to the error, e.g. what 0 means."""

    def allows(self, value: int | float) -> bool:
        """Whether ``value`` (a finite number) is allowed."""
        if not math.isfinite(value):
            return False
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The allowed values in words: ``> 0``, ``>= 1``, ``in [0, 1]``, ``in (0, 1)``, ``1 or 3``, ``finite``."""
        if self.choices:
            names = [str(c) for c in self.choices]
            return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "finite"

    def check(self, key: str, value: Any) -> None:
        """Raise ConfigError naming ``key`` when ``value`` (a number, or a list of them) is not allowed."""
        if isinstance(value, list):
            for index, element in enumerate(value):
                self.check(f"{key}[{index}]", element)
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or self.allows(value):
            return
        allowed = self.describe()
        if not math.isfinite(value):
            allowed = "finite" if allowed == "finite" else f"finite and {allowed}"
        note = f" ({self.note})" if self.note else ""
        raise ConfigError(f"config key '{key}' must be {allowed}{note}, got {value}")


def _ranged(rule: Range) -> Mapping[str, Range]:
    return {RANGE: rule}


def at_least(low: int | float, note: str = "") -> Mapping[str, Range]:
    """Field metadata: the value is >= ``low``."""
    return _ranged(Range(low=low, note=note))


def above(low: int | float, note: str = "") -> Mapping[str, Range]:
    """Field metadata: the value is > ``low``."""
    return _ranged(Range(low=low, low_open=True, note=note))


def within(
    low: int | float, high: int | float, *, low_open: bool = False, high_open: bool = False, note: str = ""
) -> Mapping[str, Range]:
    """Field metadata: the value lies between ``low`` and ``high`` (inclusive unless marked open)."""
    return _ranged(Range(low=low, high=high, low_open=low_open, high_open=high_open, note=note))


def one_of(*choices: int, note: str = "") -> Mapping[str, Range]:
    """Field metadata: the value is one of ``choices``."""
    return _ranged(Range(choices=choices, note=note))


COUNT = at_least(1)
"""Steps, epochs, sizes, widths: a whole number >= 1."""
NON_NEGATIVE = at_least(0)
"""Weight decays, damping, strengths: a finite number >= 0."""
POSITIVE = above(0)
"""Learning rates, temperatures: a finite number > 0."""
PROBABILITY = within(0, 1)
"""Probabilities and fractions of a peak learning rate: in [0, 1]."""
MOMENTUM = within(0, 1, high_open=True)
"""SGD and LARS momentum: in [0, 1)."""
SEED = within(0, 2**32 - 1)
"""Seeds: whole numbers NumPy, torch and Python's random all take."""
PRETEXT_BATCH = at_least(2, "a SimCLR or BYOL batch needs two images")
"""Images per pretext batch: the contrastive and BatchNorm statistics need two."""
CROP_SCALE = within(0, 1, low_open=True)
"""Area fractions of a random resized crop: in (0, 1]."""


@dataclass
class DataConfig:
    """Which data each stage uses and how it is prepared."""

    pretext: str = "fashion-mnist"
    """Dataset of the pretext task (labels unused); `bissl data list` shows every name, `folder:PATH` any image folder."""
    downstream: str = "digits"
    """Labelled dataset of the downstream task (warm-up, BiSSL upper level, fine-tuning, evaluation)."""
    root: str | None = None
    """Folder searched first for datasets, then $BISSL_DATA, then ~/.cache/bissl (each when set; `bissl data list` shows the order); data.download=true downloads into the first of them."""
    download: bool = False
    """Download a missing dataset with torchvision into the first data root (root, else $BISSL_DATA, else ~/.cache/bissl), where later runs find it."""
    image_size: int = field(default=28, metadata=at_least(4))
    """Side in pixels every image is resized to on load; crops are made at this size."""
    channels: int | Literal["auto"] = field(default="auto", metadata=one_of(*CHANNEL_CHOICES, note="or auto"))
    """Input channels of the backbone: auto keeps each dataset's own (folder: sets of grey images load as 1); 1 or 3 converts."""
    pretext_limit: int | None = field(default=None, metadata=COUNT)
    """Keep a seeded random subset of this many pretext training images (null: all)."""
    downstream_limit: int | None = field(default=None, metadata=COUNT)
    """Keep a seeded random subset of this many downstream training images (null: all)."""
    val_fraction: float = field(default=0.2, metadata=within(0, 1, low_open=True, high_open=True))
    """Share of the downstream training split held out for validation when the set has no official one."""
    split_seed: int = field(default=0, metadata=SEED)
    """Seed of the validation split and of the data limits (fixed across pipeline seeds)."""
    num_workers: int = field(default=0, metadata=NON_NEGATIVE)
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
    width: int = field(default=16, metadata=COUNT)
    """small_resnet only: channels of the first stage (doubled at every further stage)."""
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1], metadata=COUNT)
    """small_resnet only: residual blocks per stage."""
    sync_bn: bool = False
    """Synchronise BatchNorm statistics across processes (SyncBatchNorm) in multi-process runs."""


@dataclass
class PretextConfig:
    """The self-supervised task (SPEC §5): SimCLR or BYOL with an MLP projector."""

    method: Literal["simclr", "byol"] = "simclr"
    """Pretext task: SimCLR (contrastive) or BYOL (predictor against an EMA target)."""
    temperature: float = field(default=0.5, metadata=POSITIVE)
    """SimCLR: temperature of the contrastive softmax."""
    projector_hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=COUNT)
    """Hidden widths of the projector MLP (each followed by BatchNorm and ReLU)."""
    projector_dim: int = field(default=256, metadata=COUNT)
    """Output width of the projector."""
    predictor_hidden: list[int] = field(default_factory=lambda: [256], metadata=COUNT)
    """BYOL: hidden widths of the predictor MLP."""
    ema: float = field(default=0.9995, metadata=PROBABILITY)
    """BYOL: decay of the target network's exponential moving average."""
    ema_schedule: Literal["constant", "cosine"] = "constant"
    """BYOL: keep the EMA decay constant, or raise it from ema to 1 along a cosine over the training steps."""
    head_hidden_bias: bool = False
    """Projector and predictor: hidden Linear layers carry a bias (cancelled by their BatchNorm in training mode; the authors' code has one)."""
    head_output_bias: bool = True
    """Projector and predictor: the output Linear layer carries a bias (the authors' has none)."""
    projector_warmup_steps: int = field(default=0, metadata=at_least(0, "0: off"))
    """bilevel: LARS steps that train the pretext head on the frozen backbone before the alternations (needed when the pretext checkpoint was imported without a projector)."""
    projector_warmup_lr: float = field(default=1.0, metadata=POSITIVE)
    """bilevel: peak LARS learning rate of the projector warm-up (10% linear warm-up, then cosine to bilevel.lower_final_lr_ratio of it)."""


@dataclass
class AugmentConfig:
    """Two-view augmentations (SPEC §5) and downstream crops."""

    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata=CROP_SCALE)
    """Pretext views: area fraction range [low, high] of the random resized crop."""
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3], metadata=POSITIVE)
    """Pretext views: aspect ratio range [low, high] of the random resized crop."""
    reference_crop: bool = False
    """Reproduce the reference's crop quirk: aspect ratio range (0.5, 1.0) in place of crop_ratio."""
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1], metadata=NON_NEGATIVE)
    """Colour jitter strengths: brightness, contrast, saturation, hue."""
    jitter_p: float = field(default=0.8, metadata=PROBABILITY)
    """Probability of the colour jitter in each view."""
    grayscale_p: float = field(default=0.2, metadata=PROBABILITY)
    """Probability of turning a colour view grey."""
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1], metadata=PROBABILITY)
    """Gaussian blur probability of view 1 and view 2."""
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.2], metadata=PROBABILITY)
    """Solarisation probability of view 1 and view 2."""
    flip_p: float = field(default=0.5, metadata=PROBABILITY)
    """Horizontal flip probability (pretext views)."""
    downstream_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata=CROP_SCALE)
    """Downstream training: area fraction range of the random resized crop."""


@dataclass
class PretrainConfig:
    """Pretext pretraining with LARS and a per-step warm-up + cosine schedule."""

    epochs: int = field(default=500, metadata=COUNT)
    """Pretraining epochs over the pretext set (ignored when steps is set)."""
    steps: int | None = field(default=None, metadata=COUNT)
    """Total optimiser steps, in place of epochs (null: epochs x batches per epoch)."""
    batch_size: int = field(default=1024, metadata=PRETEXT_BATCH)
    """Images per step (global: split across processes)."""
    lr: float = field(default=4.8, metadata=POSITIVE)
    """Peak LARS learning rate (not scaled by the batch size)."""
    weight_decay: float = field(default=1e-6, metadata=NON_NEGATIVE)
    """LARS weight decay."""
    momentum: float = field(default=0.9, metadata=MOMENTUM)
    """LARS momentum."""
    warmup_epochs: float = field(default=10.0, metadata=NON_NEGATIVE)
    """Linear learning-rate warm-up, in epochs, before the cosine decay."""
    final_lr_ratio: float = field(default=0.0, metadata=PROBABILITY)
    """Learning rate at the end of the cosine, as a fraction of the peak."""
    lars_eta: float = field(default=0.001, metadata=POSITIVE)
    """LARS trust coefficient."""
    lars_exclude_bias_norm: bool = True
    """Exempt biases and normalisation parameters from weight decay and the trust ratio."""
    clip_grad: float | None = field(default=None, metadata=POSITIVE)
    """Clip the gradient norm at this value (null: no clipping)."""
    log_every: int = field(default=10, metadata=COUNT)
    """Steps between lines in metrics.jsonl."""
    checkpoint_every: int = field(default=500, metadata=COUNT)
    """Steps between checkpoints (a run also checkpoints when stopped and at the end)."""
    knn_every: int = field(default=0, metadata=at_least(0, "0: once, at the end"))
    """Steps between k-NN accuracy checks of frozen features on the pretext set's labelled splits (0: once, at the end)."""
    knn_k: int = field(default=20, metadata=COUNT)
    """Neighbours that vote in the pretraining k-NN monitor."""
    knn_temperature: float = field(default=0.07, metadata=POSITIVE)
    """Temperature of the k-NN monitor's similarity weights."""
    init_checkpoint: str | None = None
    """A pretext checkpoint to continue from (backbone and pretext head) instead of a random start."""


@dataclass
class WarmupConfig:
    """Downstream head warm-up on the frozen pretext backbone (SPEC §4.2)."""

    epochs: int = field(default=20, metadata=COUNT)
    """Epochs of head training on the frozen backbone."""
    lr: float | None = field(default=None, metadata=POSITIVE)
    """SGD learning rate (null: bilevel.upper_lr)."""
    weight_decay: float | None = field(default=None, metadata=NON_NEGATIVE)
    """SGD weight decay (null: bilevel.upper_weight_decay)."""
    momentum: float = field(default=0.9, metadata=MOMENTUM)
    """SGD momentum."""
    batch_size: int = field(default=256, metadata=COUNT)
    """Labelled images per step."""
    backbone_bn_mode: Literal["train", "eval"] = "train"
    """BatchNorm mode of the frozen backbone: train adapts its statistics to the downstream data, as the reference does."""


@dataclass
class BilevelConfig:
    """The alternating BiSSL stage (SPEC §2–4). Defaults are the published v4 settings."""

    alternations: int = field(default=500, metadata=COUNT)
    """Alternations of a lower phase and an upper phase."""
    lower_steps: int = field(default=20, metadata=COUNT)
    """Pretext (lower-level) optimiser steps per alternation."""
    upper_steps: int = field(default=8, metadata=COUNT)
    """Downstream (upper-level) optimiser steps per alternation."""
    lam: float = field(default=1e-3, metadata=POSITIVE)
    """λ: weight of the proximal term (λ/2)||θ_P − θ_D||² that ties the lower backbone to the upper one."""
    damping: float = field(default=10.0, metadata=NON_NEGATIVE)
    """δ: added to λ inside the inverse only, so the solved system is x + Hx/(λ+δ) = v."""
    gamma: float = field(default=1.0, metadata=NON_NEGATIVE)
    """γ: weight of the upper backbone's own downstream gradient in the upper objective."""
    solver: Literal["cg", "minres", "neumann", "lowrank", "exact", "identity"] = "cg"
    """Linear solver for (I + H/(λ+δ)) x = v: cg, minres, neumann, lowrank, exact (tiny models), identity (first order)."""
    cg_iterations: int = field(
        default=5, metadata=at_least(0, "0 only with solver lowrank, exact or identity")
    )
    """Iterations (CG) or series terms (Neumann) per solve."""
    layerwise: bool = True
    """CG with per-tensor step sizes, as the reference runs it; false: textbook CG over the whole vector."""
    tolerance: float = field(default=0.0, metadata=at_least(0, "0: always run every iteration"))
    """Stop a solve early when the relative residual falls below this (0: always run every iteration)."""
    neumann_scale: float = field(default=1.0, metadata=POSITIVE)
    """Neumann series step c in x = c Σ (I − cA)^k v."""
    warm_start: bool = False
    """Start each upper step's solve from the previous step's solution."""
    hvp_mode: Literal["reuse", "recompute", "forward-over-reverse"] = "reuse"
    """Hessian-vector products: reuse one gradient graph, rebuild it per product (reference), or forward-over-reverse."""
    hvp_scope: Literal["phase", "step"] = "phase"
    """With reuse: build the gradient graph once per alternation (phase) or once per upper step (less memory)."""
    hvp_update_bn_stats: bool = False
    """Let Hessian-vector products update the lower backbone's BatchNorm running statistics, as the reference does."""
    hessian_batch_size: int | None = field(default=None, metadata=PRETEXT_BATCH)
    """Pretext images in the Hessian batch (null: lower_batch_size)."""
    lower_batch_size: int = field(default=256, metadata=PRETEXT_BATCH)
    """Pretext images per lower step."""
    upper_batch_size: int = field(default=256, metadata=COUNT)
    """Labelled images per upper step."""
    lower_lr: float = field(default=1.0, metadata=POSITIVE)
    """Peak LARS learning rate of the lower level."""
    lower_weight_decay: float = field(default=1e-6, metadata=NON_NEGATIVE)
    """LARS weight decay of the lower level."""
    lower_momentum: float = field(default=0.9, metadata=MOMENTUM)
    """LARS momentum of the lower level."""
    lower_warmup_steps: int = field(default=200, metadata=NON_NEGATIVE)
    """Linear warm-up of the lower learning rate, in lower steps, before its cosine over all lower steps."""
    lower_final_lr_ratio: float = field(default=0.001, metadata=PROBABILITY)
    """Lower learning rate at the end of the cosine, as a fraction of the peak."""
    upper_lr: float = field(default=0.03, metadata=POSITIVE)
    """Peak SGD learning rate of the upper level (cosine over all upper steps, no warm-up)."""
    upper_weight_decay: float = field(default=1e-3, metadata=NON_NEGATIVE)
    """SGD weight decay of the upper level."""
    upper_momentum: float = field(default=0.9, metadata=MOMENTUM)
    """SGD momentum of the upper level."""
    upper_final_lr_ratio: float = field(default=0.001, metadata=PROBABILITY)
    """Upper learning rate at the end of the cosine, as a fraction of the peak."""
    clip_grad: float = field(default=10.0, metadata=POSITIVE)
    """Gradient norm clip of each lower step and of each joint upper gradient."""
    eval_every: int = field(default=0, metadata=at_least(0, "0: never"))
    """Alternations between validation evaluations of the upper backbone and head (0: never)."""
    upper_bn: Literal["refresh", "running"] = "refresh"
    """BatchNorm statistics of the upper backbone for validation and upper_backbone.pt: refresh (recomputed by one pass over the downstream training split at the current weights) or running (the averages the upper steps left, which trail the weights)."""
    checkpoint_every: int = field(default=10, metadata=COUNT)
    """Alternations between checkpoints."""
    lower_lars_exclude_bias_norm: bool | None = None
    """Lower-level LARS leaves biases and norm parameters without weight decay and trust ratio (null: as pretrain.lars_exclude_bias_norm)."""
    curvature: Literal["hessian", "ggn"] = "hessian"
    """Curvature in the implicit system: the pretext Hessian, or its Gauss–Newton part (PSD)."""
    lowrank_rank: int = field(default=10, metadata=COUNT)
    """solver=lowrank: rank k of the basis built once per upper phase (k products)."""
    lowrank_method: Literal["lanczos", "nystrom"] = "lanczos"
    """solver=lowrank: how the basis is built; nystrom needs PSD curvature (curvature=ggn)."""
    lowrank_negative: Literal["clip", "abs", "keep"] = "clip"
    """solver=lowrank: treatment of eigenvalue estimates at or below −(λ+δ): clip to 0, abs, or keep."""
    lowrank_refine: Literal["none", "cg", "minres"] = "none"
    """solver=lowrank: none applies the low-rank inverse; cg or minres refine it, preconditioned by it."""
    lowrank_refine_iterations: int = field(default=2, metadata=COUNT)
    """solver=lowrank with refinement: CG/MINRES iterations (products) per upper step."""
    diagnose_every: int = field(default=0, metadata=at_least(0, "0: off"))
    """Log curvature diagnostics every N alternations, starting with the first (0: off)."""
    diagnose_steps: int = field(default=20, metadata=COUNT)
    """Lanczos steps (products) behind the diagnostics and the adaptive damping estimate."""
    adaptive_damping: bool = False
    """Raise δ per alternation until λ_min(I + H/(λ+δ)) >= damping_margin (from a Lanczos estimate)."""
    damping_margin: float = field(default=0.1, metadata=within(0, 1, low_open=True, high_open=True))
    """adaptive_damping: the smallest eigenvalue of I + H/(λ+δ) to reach, in (0, 1)."""
    damping_max: float = field(default=1.0e4, metadata=NON_NEGATIVE)
    """adaptive_damping: the largest δ it may use."""


@dataclass
class FinetuneConfig:
    """Full fine-tuning of a backbone with a fresh linear head (SPEC §4.4)."""

    epochs: int = field(default=400, metadata=COUNT)
    """Fine-tuning epochs."""
    batch_size: int = field(default=256, metadata=COUNT)
    """Labelled images per step."""
    lr: float = field(default=0.01, metadata=POSITIVE)
    """Peak SGD learning rate (cosine schedule); the search draws its own."""
    weight_decay: float = field(default=1e-4, metadata=NON_NEGATIVE)
    """SGD weight decay; the search draws its own."""
    momentum: float = field(default=0.9, metadata=MOMENTUM)
    """SGD momentum."""
    final_lr_ratio: float = field(default=0.0, metadata=PROBABILITY)
    """Learning rate at the end of the cosine, as a fraction of the peak (the authors': 0.001)."""
    eval_every: int = field(default=1, metadata=COUNT)
    """Epochs between validation and test evaluations."""
    checkpoint_every: int = field(default=1, metadata=COUNT)
    """Epochs between checkpoints."""


@dataclass
class SearchConfig:
    """Hyper-parameter search over lr and weight decay, then seeds at the best setting."""

    trials: int = field(default=100, metadata=COUNT)
    """Fine-tuning trials of the search."""
    sampler: Literal["random", "tpe"] = "random"
    """Optuna sampler: random (as the paper) or TPE."""
    lr_range: list[float] = field(default_factory=lambda: [1e-4, 1.0], metadata=POSITIVE)
    """Learning-rate range [low, high], sampled log-uniformly."""
    weight_decay_range: list[float] = field(default_factory=lambda: [1e-5, 1e-2], metadata=POSITIVE)
    """Weight-decay range [low, high], sampled log-uniformly."""
    storage: str | None = None
    """Optuna storage URL shared across machines (null: SQLite study.db in the run folder)."""
    study_name: str = "finetune"
    """Study name prefix; a hash of the search problem is appended."""
    epochs: int | None = field(default=None, metadata=COUNT)
    """Epochs of each trial (null: finetune.epochs)."""
    seeds: int = field(default=10, metadata=COUNT)
    """Fine-tuning seeds run at the best setting."""
    folds: int = field(default=1, metadata=COUNT)
    """Score each trial by k-fold cross-validation over the labelled pool (training + validation split), the mean of k fine-tunes (1: the validation split alone, as the paper)."""


@dataclass
class EvalConfig:
    """Alignment analyses of frozen features."""

    knn_k: int = field(default=20, metadata=COUNT)
    """Neighbours that vote in the k-NN probe."""
    knn_temperature: float = field(default=0.07, metadata=POSITIVE)
    """Temperature of the k-NN probe's similarity weights."""
    probe_epochs: int = field(default=100, metadata=COUNT)
    """Training epochs of the linear probe."""
    tsne_samples: int = field(default=1000, metadata=at_least(0, "0: no t-SNE"))
    """Downstream images embedded by t-SNE."""
    batch_size: int = field(default=512, metadata=COUNT)
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
    seeds: int | None = field(default=None, metadata=COUNT)
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
    pipeline_seeds: list[int] = field(default_factory=lambda: [100, 200, 300], metadata=SEED)
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

    seed: int = field(default=0, metadata=SEED)
    """Seed of every random draw in the run (data order, augmentations, initialisation)."""
    device: str = "auto"
    """auto (this process's GPU if there is one, else the CPU), cpu, cuda or cuda:N."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast precision of forward and backward passes."""
    hvp_precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast precision of the Hessian-vector products."""
    channels_last: bool = False
    """Store convolution weights and inputs as NHWC (faster on GPU tensor cores)."""
    max_nonfinite: int = field(default=5, metadata=COUNT)
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
        if not Path(text).is_dir():
            raise ConfigError(
                f"unknown config name '{text}'; shipped configs: {', '.join(shipped) or 'none'} "
                "(or give the path of a YAML file)"
            )
    file = Path(text)
    if file.is_dir():
        raise ConfigError(
            f"config '{file}' is a folder, not a YAML file; pass --config a YAML file or a shipped name "
            "('bissl configs' lists them)"
        )
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


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping holds the same key twice (``key`` dotted from the document's top, ``line`` 1-based)."""

    def __init__(self, key: str, line: int) -> None:
        super().__init__(f"key '{key}' twice (line {line})")
        self.key = key
        self.line = line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding a key twice (safe_load silently keeps the last)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "", set())
        return super().construct_document(node)


def _refuse_duplicate_keys(node: yaml.Node, prefix: str, seen_nodes: set[int]) -> None:
    """Raise DuplicateKeyError for the first scalar key repeated in a mapping of ``node``'s tree.

    Keys merged in with ``<<`` are not counted: the mapping's own keys override them, as YAML says."""
    if id(node) in seen_nodes:  # an alias of a node already walked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if isinstance(key_node, yaml.ScalarNode):
                key = f"{prefix}{key_node.value}"
                if key_node.value in keys:
                    raise DuplicateKeyError(key, key_node.start_mark.line + 1)
                keys.add(key_node.value)
                _refuse_duplicate_keys(value_node, key + ".", seen_nodes)
            else:
                _refuse_duplicate_keys(value_node, prefix, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        stem = prefix.rstrip(".")
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{stem}[{index}].", seen_nodes)


def read_config_file(file: Path) -> dict[str, Any]:
    """The nested mapping a YAML config file holds; ConfigError for anything but a readable UTF-8 mapping."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{file}' is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file '{file}' cannot be read ({exc.strerror or exc})") from None
    try:
        loaded = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: plain data only
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"config file '{file}' has key '{exc.key}' twice (line {exc.line}); keep one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{file}' is not valid YAML{where}; fix the syntax") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file '{file}' must hold a mapping of sections, not {type(loaded).__name__}"
        )
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate.

    ``path`` is a YAML file or the name of a shipped config (see :func:`resolve_config`)."""
    data = read_config_file(resolve_config(path)) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    config: Config = _from_dict(Config, data)
    validate(config)
    return config


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


ITERATIVE_SOLVERS = ("cg", "minres", "neumann")
COMPARE_ARMS = ("baseline", "bissl")


def ranges(cls: Any = Config, prefix: str = "") -> dict[str, Range]:
    """Dotted key -> the declared :class:`Range` of every ranged field under the dataclass ``cls`` (default
    :class:`Config`); the fields of a list of dataclasses appear as ``section.list[i].field``."""
    hints = _field_types(cls)
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
        b.solver not in ITERATIVE_SOLVERS or b.cg_iterations >= 1,
        f"config key 'bilevel.cg_iterations' must be >= 1 for solver={b.solver}, got {b.cg_iterations}; "
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


def validate(config: Config) -> None:
    """Every value against its field's declared range, then list shapes and cross-field rules."""
    _check_ranges(config)
    _check_shapes(config)
    _validate_curvature(config.bilevel)
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
