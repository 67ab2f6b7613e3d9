"""The config's dataclasses: one per section, every field with its type, default, allowed values and a
one-line attribute docstring (the string on the line below it).

The attribute docstrings are read from this file's source by :func:`bissl.config.describe.attribute_docstrings`
(``bissl config show`` prints them), so every field needs one; the source ships with the package.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from bissl.config.bounds import (
    COUNT,
    CROP_SCALE,
    MOMENTUM,
    NON_NEGATIVE,
    POSITIVE,
    PRETEXT_BATCH,
    PROBABILITY,
    SEED,
    at_least,
    one_of,
    within,
)

CHANNEL_CHOICES = (1, 3)


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

    backbone: Literal[
        "small_resnet", "resnet18", "resnet34", "resnet50", "vit", "vit_tiny", "vit_small", "vit_base"
    ] = "small_resnet"
    """Backbone: a small ResNet for CPUs, a torchvision ResNet (classifier removed), or a timm Vision Transformer: vit (shaped by the vit_* keys), vit_tiny (192 wide, 3 heads, 12 deep), vit_small (384, 6, 12), vit_base (768, 12, 12); docs/vit.md."""
    stem: Literal["imagenet", "small"] = "small"
    """Torchvision ResNets only: the 7x7/2 convolution + max-pool (imagenet) or a 3x3/1 convolution (small images)."""
    width: int = field(default=16, metadata=COUNT)
    """small_resnet only: channels of the first stage (doubled at every further stage)."""
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1], metadata=COUNT)
    """small_resnet only: residual blocks per stage."""
    sync_bn: bool = False
    """Synchronise BatchNorm statistics across processes (SyncBatchNorm) in multi-process runs."""
    vit_patch_size: int = field(default=16, metadata=COUNT)
    """ViTs only: side in pixels of the square patches; data.image_size must be a multiple of it."""
    vit_depth: int = field(default=12, metadata=COUNT)
    """vit only: transformer blocks (the named sizes fix it)."""
    vit_width: int = field(default=192, metadata=COUNT)
    """vit only: embedding width, a multiple of vit_heads (the named sizes fix it)."""
    vit_heads: int = field(default=3, metadata=COUNT)
    """vit only: attention heads per block (the named sizes fix it)."""
    vit_mlp_ratio: float = field(default=4.0, metadata=POSITIVE)
    """ViTs only: hidden width of each block's MLP as a multiple of the embedding width."""
    vit_pool: Literal["cls", "mean"] = "cls"
    """ViTs only: the feature is the final-norm CLS token (cls, as DINO) or the mean of the final-norm patch tokens (mean)."""


@dataclass
class PretextConfig:
    """The self-supervised task (docs/method.md, Pipeline; docs/pretext.md): SimCLR, BYOL, VICReg, Barlow Twins,
    MoCo v3 or DINO, each with an MLP projector."""

    method: Literal["simclr", "byol", "vicreg", "barlow_twins", "mocov3", "dino"] = "simclr"
    """Pretext task: SimCLR (contrastive), BYOL (predictor against an EMA target), VICReg (variance-invariance-covariance), Barlow Twins (cross-correlation to identity), MoCo v3 (predictor against momentum keys, contrastive) or DINO (self-distillation against a momentum teacher's centred, sharpened outputs); docs/pretext.md."""
    temperature: float = field(default=0.5, metadata=POSITIVE)
    """SimCLR: temperature of the contrastive softmax."""
    projector_hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=COUNT)
    """Hidden widths of the projector MLP (each followed by BatchNorm and ReLU)."""
    projector_dim: int = field(default=256, metadata=COUNT)
    """Output width of the projector."""
    predictor_hidden: list[int] = field(default_factory=lambda: [256], metadata=COUNT)
    """BYOL and MoCo v3: hidden widths of the predictor MLP."""
    ema: float = field(default=0.9995, metadata=PROBABILITY)
    """BYOL: decay of the target network's exponential moving average."""
    ema_schedule: Literal["constant", "cosine"] = "constant"
    """BYOL: keep the EMA decay constant, or raise it from ema to 1 along a cosine over the training steps."""
    vicreg_invariance: float = field(default=25.0, metadata=NON_NEGATIVE)
    """VICReg: weight λ of the invariance term (mean squared error between the two views' embeddings)."""
    vicreg_variance: float = field(default=25.0, metadata=NON_NEGATIVE)
    """VICReg: weight μ of the variance term (hinge pushing each dimension's standard deviation up to 1)."""
    vicreg_covariance: float = field(default=1.0, metadata=NON_NEGATIVE)
    """VICReg: weight ν of the covariance term (squared off-diagonal covariances over the embedding width)."""
    barlow_lambda: float = field(default=0.0051, metadata=NON_NEGATIVE)
    """Barlow Twins: weight λ of the redundancy-reduction (off-diagonal) term of the cross-correlation loss."""
    moco_temperature: float = field(default=1.0, metadata=POSITIVE)
    """MoCo v3: temperature τ of the contrastive softmax (1.0 is the paper's ResNet setting; 0.2 for ViTs)."""
    moco_momentum: float = field(default=0.99, metadata=PROBABILITY)
    """MoCo v3: decay of the momentum encoder at the start of training."""
    moco_momentum_schedule: Literal["cosine", "constant"] = "cosine"
    """MoCo v3: raise the momentum from moco_momentum to 1 along a half cosine over the training steps, or keep it constant."""
    dino_out_dim: int = field(default=65536, metadata=COUNT)
    """DINO: logits of the head's weight-normalised last layer (the prototypes); the MLP before it is projector_hidden then projector_dim (the bottleneck)."""
    dino_norm_last_layer: bool = True
    """DINO: fix the last layer's weight-norm scale at 1, so every prototype has unit norm (false: the scale is trained)."""
    dino_student_temperature: float = field(default=0.1, metadata=POSITIVE)
    """DINO: temperature τ_s of the student's softmax."""
    dino_teacher_temperature: float = field(default=0.04, metadata=POSITIVE)
    """DINO: temperature τ_t of the teacher's softmax after the warm-up (sharpening)."""
    dino_warmup_teacher_temperature: float = field(default=0.04, metadata=POSITIVE)
    """DINO: teacher temperature at the start of each stage, raised linearly to dino_teacher_temperature over dino_warmup_fraction of the stage's steps."""
    dino_warmup_fraction: float = field(default=0.0, metadata=PROBABILITY)
    """DINO: share of each stage's optimiser steps over which the teacher temperature warms up (0: no warm-up)."""
    dino_center_momentum: float = field(default=0.9, metadata=PROBABILITY)
    """DINO: decay m of the centre, c ← m·c + (1 − m)·(mean teacher output over the global batch), after each step."""
    dino_momentum: float = field(default=0.996, metadata=PROBABILITY)
    """DINO: decay of the teacher (momentum copy of backbone and head) at the start of each stage, raised to 1 along a half cosine."""
    dino_local_crops: int = field(
        default=0,
        metadata=one_of(0, note="multi-crop is not implemented: the pretext data gives two global views"),
    )
    """DINO: small local crops per image besides the two global views; only 0 (multi-crop is not implemented, docs/pretext.md)."""
    head_hidden_bias: bool = False
    """Projector and predictor (every method): hidden Linear layers carry a bias (cancelled by their BatchNorm in training mode; the authors' code has one)."""
    head_output_bias: bool = True
    """Projector and predictor (every method): the output Linear layer carries a bias (the authors' has none; MoCo v3's projector never has one, its output BatchNorm would cancel it)."""
    head_output_bn: bool = False
    """Projector (every method): end in a BatchNorm with affine parameters (SimCLR v2's projector, lightly's default SimCLR and MoCo heads); MoCo v3's projector ends in a BatchNorm either way, affine only with this set."""
    head_hidden_bn: bool = True
    """Projector and predictor (every method): a BatchNorm after each hidden Linear layer (false: Linear-ReLU, as solo-learn's and lightly's SimCLR projectors without batch norm; set head_hidden_bias=true with it)."""
    projector_warmup_steps: int = field(default=0, metadata=at_least(0, "0: off"))
    """bilevel: optimiser steps (bilevel.lower_optimizer) that train the pretext head on the frozen backbone before the alternations (needed when the pretext checkpoint was imported without a projector)."""
    projector_warmup_lr: float = field(default=1.0, metadata=POSITIVE)
    """bilevel: peak learning rate of the projector warm-up (10% linear warm-up, then cosine to bilevel.lower_final_lr_ratio of it)."""


@dataclass
class AugmentConfig:
    """Two-view augmentations of the pretext task and downstream crops."""

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
    """Pretext pretraining with LARS (or AdamW) and a per-step warm-up + cosine schedule."""

    epochs: int = field(default=500, metadata=COUNT)
    """Pretraining epochs over the pretext set (ignored when steps is set)."""
    steps: int | None = field(default=None, metadata=COUNT)
    """Total optimiser steps, in place of epochs (null: epochs x batches per epoch)."""
    batch_size: int = field(default=1024, metadata=PRETEXT_BATCH)
    """Images per step (global: split across processes)."""
    optimizer: Literal["lars", "adamw"] = "lars"
    """Optimiser: lars, or adamw (PyTorch's betas (0.9, 0.999), eps 1e-8; lr, weight_decay, clip_grad and the schedule apply; momentum and lars_eta unused)."""
    lr: float = field(default=4.8, metadata=POSITIVE)
    """Peak learning rate (not scaled by the batch size)."""
    weight_decay: float = field(default=1e-6, metadata=NON_NEGATIVE)
    """Weight decay (decoupled with adamw)."""
    momentum: float = field(default=0.9, metadata=MOMENTUM)
    """LARS momentum (unused with adamw)."""
    warmup_epochs: float = field(default=10.0, metadata=NON_NEGATIVE)
    """Linear learning-rate warm-up, in epochs, before the cosine decay."""
    final_lr_ratio: float = field(default=0.0, metadata=PROBABILITY)
    """Learning rate at the end of the cosine, as a fraction of the peak."""
    lars_eta: float = field(default=0.001, metadata=POSITIVE)
    """LARS trust coefficient."""
    lars_exclude_bias_norm: bool = True
    """Exempt biases and normalisation parameters from weight decay and the trust ratio (with adamw: from weight decay)."""
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
    """Downstream head warm-up on the frozen pretext backbone (docs/method.md, Pipeline)."""

    epochs: int = field(default=20, metadata=COUNT)
    """Epochs of head training on the frozen backbone."""
    optimizer: Literal["sgd", "adamw"] | None = None
    """Optimiser of the head: sgd or adamw (PyTorch's betas; momentum unused; no weight decay on the bias) (null: bilevel.upper_optimizer)."""
    lr: float | None = field(default=None, metadata=POSITIVE)
    """Learning rate (null: bilevel.upper_lr)."""
    weight_decay: float | None = field(default=None, metadata=NON_NEGATIVE)
    """Weight decay (null: bilevel.upper_weight_decay)."""
    momentum: float = field(default=0.9, metadata=MOMENTUM)
    """SGD momentum (unused with adamw)."""
    batch_size: int = field(default=256, metadata=COUNT)
    """Labelled images per step."""
    backbone_bn_mode: Literal["train", "eval"] = "train"
    """BatchNorm mode of the frozen backbone: train adapts its statistics to the downstream data, as the reference does (no effect on a ViT: no BatchNorm)."""


@dataclass
class BilevelConfig:
    """The alternating BiSSL stage (docs/method.md: Objectives, Implicit gradient, Pipeline). Defaults are the
    published v4 settings."""

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
    solver_iterations: int = field(
        default=5, metadata=at_least(0, "0 only with solver lowrank, exact or identity")
    )
    """Iterations of the solver per solve: CG and MINRES iterations, Neumann series terms (formerly cg_iterations, still accepted)."""
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
    lower_optimizer: Literal["lars", "adamw"] = "lars"
    """Optimiser of the lower level and of the projector warm-up: lars, or adamw (PyTorch's betas; lower_momentum unused)."""
    lower_lr: float = field(default=1.0, metadata=POSITIVE)
    """Peak learning rate of the lower level."""
    lower_weight_decay: float = field(default=1e-6, metadata=NON_NEGATIVE)
    """Weight decay of the lower level (decoupled with adamw)."""
    lower_momentum: float = field(default=0.9, metadata=MOMENTUM)
    """LARS momentum of the lower level (unused with adamw)."""
    lower_warmup_steps: int = field(default=200, metadata=NON_NEGATIVE)
    """Linear warm-up of the lower learning rate, in lower steps, before its cosine over all lower steps."""
    lower_final_lr_ratio: float = field(default=0.001, metadata=PROBABILITY)
    """Lower learning rate at the end of the cosine, as a fraction of the peak."""
    upper_optimizer: Literal["sgd", "adamw"] = "sgd"
    """Optimiser of the upper level: sgd, or adamw (PyTorch's betas; upper_momentum unused; no weight decay on biases and norms)."""
    upper_lr: float = field(default=0.03, metadata=POSITIVE)
    """Peak learning rate of the upper level (cosine over all upper steps, no warm-up)."""
    upper_weight_decay: float = field(default=1e-3, metadata=NON_NEGATIVE)
    """Weight decay of the upper level (decoupled with adamw)."""
    upper_momentum: float = field(default=0.9, metadata=MOMENTUM)
    """SGD momentum of the upper level (unused with adamw)."""
    upper_final_lr_ratio: float = field(default=0.001, metadata=PROBABILITY)
    """Upper learning rate at the end of the cosine, as a fraction of the peak."""
    clip_grad: float = field(default=10.0, metadata=POSITIVE)
    """Gradient norm clip of each lower step and of each joint upper gradient."""
    eval_every: int = field(default=0, metadata=at_least(0, "0: never"))
    """Alternations between validation evaluations of the upper backbone and head (0: never)."""
    upper_bn: Literal["refresh", "running"] = "refresh"
    """BatchNorm statistics of the upper backbone for validation and upper_backbone.pt: refresh (recomputed by one pass over the downstream training split at the current weights) or running (the averages the upper steps left, which trail the weights); a ViT has none to refresh."""
    checkpoint_every: int = field(default=10, metadata=COUNT)
    """Alternations between checkpoints."""
    lower_lars_exclude_bias_norm: bool | None = None
    """Lower-level LARS leaves biases and norm parameters without weight decay and trust ratio, AdamW without weight decay (null: as pretrain.lars_exclude_bias_norm)."""
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
    """Full fine-tuning of a backbone with a fresh linear head (docs/method.md, Pipeline)."""

    epochs: int = field(default=400, metadata=COUNT)
    """Fine-tuning epochs."""
    batch_size: int = field(default=256, metadata=COUNT)
    """Labelled images per step."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """Optimiser: sgd, or adamw (PyTorch's betas (0.9, 0.999); momentum unused; no weight decay on biases and norms); search trials and seed runs use it too."""
    lr: float = field(default=0.01, metadata=POSITIVE)
    """Peak learning rate (cosine schedule); the search draws its own."""
    weight_decay: float = field(default=1e-4, metadata=NON_NEGATIVE)
    """Weight decay (decoupled with adamw); the search draws its own."""
    momentum: float = field(default=0.9, metadata=MOMENTUM)
    """SGD momentum (unused with adamw)."""
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
    """Baseline against BiSSL from one pretext checkpoint (docs/method.md, Pipeline)."""

    fairness: Literal["same-checkpoint", "extra-pretext"] = "same-checkpoint"
    """Both arms from one pretext checkpoint, or the baseline gets extra pretext steps matching BiSSL's lower steps (v1)."""
    arms: list[str] = field(default_factory=lambda: ["baseline", "bissl"])
    """Arms to run: baseline, bissl."""


@dataclass
class ImportConfig:
    """`bissl import`: a public SSL checkpoint turned into a pretext checkpoint."""

    layout: Literal["torchvision", "timm", "solo-learn", "lightly", "dino", "bissl-reference"] | None = None
    """Key layout of the checkpoint: torchvision or timm ResNet state dict (timm: or ViT), solo-learn or lightly checkpoint (ResNet or ViT), the original DINO release (facebookresearch/dino: backbone-only file or training checkpoint), or the BiSSL authors' pretext files."""
    checkpoint: str | None = None
    """The checkpoint file (backbone weights, with the projector when the release holds one)."""
    head: str | None = None
    """bissl-reference only: the separate head file (projector, BYOL predictor) released beside the backbone."""
    method: Literal["simclr", "byol", "vicreg", "barlow_twins", "mocov3", "dino"] | None = None
    """The method that trained the checkpoint, when the file does not say (lightly keys cannot tell SimCLR, VICReg and Barlow Twins apart); null: read from solo-learn's hyper-parameters or told from the keys. Must match pretext.method for the head to be imported."""
    projector: bool = True
    """Import the release's projector (with the predictor and momentum networks of BYOL and MoCo v3; DINO's head, teacher and loss centre) when it holds one that fits pretext.*; false takes the backbone alone and leaves the head untrained."""
    trust_pickle: bool = False
    """Load a checkpoint that pickles Python objects besides tensors (Lightning hyper-parameters); only for files you trust."""
    resample_pos_embed: bool = True
    """ViTs: resample a position embedding made for another image size (DINO's 224 px) to the patch grid of data.image_size (bicubic, as timm's resample_abs_pos_embed); false refuses such a file."""


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
    """Also probe the reference backbone with BatchNorm statistics recalibrated by the head warm-up (skipped for a backbone without BatchNorm: the ViTs)."""
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


def field_types(cls: Any) -> dict[str, Any]:
    """Field name -> resolved type annotation of the dataclass ``cls``."""
    return typing.get_type_hints(cls)
