"""``bissl curvature``: is the implicit system of a pretext checkpoint well posed?

On one Hessian batch of the checkpoint it estimates the spectrum of the configured curvature (Hessian or
Gauss–Newton) by Lanczos, says whether I + H/(λ+δ) is positive definite, and solves the system with the
configured solver against v, the downstream gradient of a head (the warm-up head of ``head_checkpoint``,
else a freshly initialised linear head) on one downstream batch: the true relative residual of that
solution and its cosine to v. It prints one line per quantity; with ``--out`` it also writes them to
``DIR/curvature.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from bissl.bilevel.hvp import frozen_bn_stats
from bissl.bilevel.phase import SolveProbe, curvature_operator, prepare_phase, solver_options
from bissl.checkpoint import check_architecture, load_checkpoint
from bissl.config import Config
from bissl.data.stream import BatchStream
from bissl.errors import ConfigError
from bissl.models import feature_dim, linear_head
from bissl.runtime import resolve_device, seed_everything
from bissl.train.checkpoint_formats import load_pretext
from bissl.train.data_sources import (
    downstream_data,
    load_pretext_source,
    make_downstream_augment,
    make_two_view,
    pretext_stream,
)
from bissl.train.model_factory import architecture

OUTPUT_FILE = "curvature.json"


def _solver_description(config: Config) -> str:
    s = config.bilevel
    if s.solver == "cg":
        return f"cg (K={s.solver_iterations}, {'layerwise' if s.layerwise else 'textbook'})"
    if s.solver in ("minres", "neumann"):
        return f"{s.solver} (K={s.solver_iterations})"
    if s.solver == "lowrank":
        refine = "" if s.lowrank_refine == "none" else f", {s.lowrank_refine} K={s.lowrank_refine_iterations}"
        return f"lowrank (k={s.lowrank_rank}, {s.lowrank_method}, {s.lowrank_negative}{refine})"
    return s.solver


def measure_curvature(config: Config) -> dict[str, Any]:
    """The curvature diagnostics of ``config.pretext_checkpoint`` (see the module docstring) as a dict."""
    if config.pretext_checkpoint is None:
        raise ConfigError(
            "curvature needs pretext_checkpoint=PATH (a checkpoints/pretext.pt written by 'bissl pretrain')"
        )
    load_checkpoint(config.pretext_checkpoint, expect_stage="pretrain")
    head_state = None
    if config.head_checkpoint is not None:
        head_state = load_checkpoint(config.head_checkpoint, expect_stage="warmup")
    s = config.bilevel
    device = resolve_device(config.device)
    seed_everything(config.seed)
    pretext_data = load_pretext_source(config)
    splits, task = downstream_data(config, None)
    channels = pretext_data.channels
    lower = load_pretext(config.pretext_checkpoint, config, channels).to(device)
    lower.train()
    head = linear_head(feature_dim(lower.backbone), task.num_classes)
    if head_state is not None:
        assert config.head_checkpoint is not None
        check_architecture(head_state, architecture(config, channels), config.head_checkpoint)
        head.load_state_dict(head_state["head"])
    head.to(device)

    hessian_size = s.hessian_batch_size or s.lower_batch_size
    hessian_stream = pretext_stream(config, pretext_data, hessian_size, seed=config.seed + 1, device=device)
    hessian_views = make_two_view(config, pretext_data).to(device)(next(hessian_stream)[0])
    augment = make_downstream_augment(config, splits["train"]).to(device)
    images, labels = next(BatchStream(splits["train"], s.upper_batch_size, seed=config.seed, device=device))
    images = augment(images, train=True)

    params = tuple(lower.backbone.parameters())
    with torch.enable_grad(), frozen_bn_stats(lower):
        downstream_loss = task.loss(head(lower.backbone(images)), labels)
        v = tuple(g.detach() for g in torch.autograd.grad(downstream_loss, params))
    operator = curvature_operator(lower, hessian_views, s, precision=config.hvp_precision)
    try:
        phase = prepare_phase(operator.matvec, params, s, index=0, estimate=True)
        mu = s.lam + phase.damping

        def system(x: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(x_i + h_i / mu for x_i, h_i in zip(x, operator.matvec(x)))

        probe = SolveProbe(s.solver)
        probe(system, v, **solver_options(s, phase))
        products = operator.products
    finally:
        operator.release()
    assert phase.spectrum is not None
    return {
        "pretext_checkpoint": str(config.pretext_checkpoint),
        "curvature": s.curvature,
        "hessian_pairs": int(hessian_views[0].shape[0]),
        "lanczos_steps": phase.estimate_products,
        "lambda_min": phase.spectrum.lambda_min,
        "lambda_max": phase.spectrum.lambda_max,
        "lam": s.lam,
        "damping": phase.damping,
        "configured_damping": s.damping,
        "mu": mu,
        "ritz_below": phase.spectrum.below,
        "positive_definite": phase.spectrum.positive_definite,
        "solver": _solver_description(config),
        "true_residual": probe.true_residual,
        "cosine_first_order": probe.cosine,
        "head": (
            f"warm-up head of {config.head_checkpoint}"
            if config.head_checkpoint is not None
            else "a freshly initialised linear head (no head_checkpoint given)"
        ),
        "downstream_images": int(images.shape[0]),
        "products": products,
    }


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def format_curvature(result: dict[str, Any]) -> list[str]:
    """The printed lines: one per quantity."""
    name = "Hessian" if result["curvature"] == "hessian" else "Gauss–Newton matrix"
    adapted = "" if result["damping"] == result["configured_damping"] else " (raised by adaptive damping)"
    return [
        f"curvature:          {name} of the pretext loss on {result['hessian_pairs']} pairs, "
        f"{result['lanczos_steps']} Lanczos steps",
        f"lambda_min:         {_number(result['lambda_min'])}",
        f"lambda_max:         {_number(result['lambda_max'])}",
        f"below -(lam+delta): {result['ritz_below']} Ritz values below -{_number(result['mu'])} "
        f"(lam {_number(result['lam'])}, delta {_number(result['damping'])}{adapted})",
        f"positive definite:  {'yes' if result['positive_definite'] else 'no'} (I + H/(lam+delta))",
        f"true residual:      {_number(result['true_residual'])} (||v - A x||/||v||, solver {result['solver']})",
        f"cos(x, v):          {_number(result['cosine_first_order'])} (v from {result['head']}, "
        f"{result['downstream_images']} downstream images)",
    ]


def _output_folder(out: str) -> tuple[Path, bool]:
    """The --out folder of ``curvature``, checked before any computing: not empty, not a file, writable.
    Returns it and whether this call created it."""
    if not out.strip():
        raise ConfigError("--out is empty; name the folder curvature.json is written to, or leave --out out")
    folder = Path(out)
    try:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(
                f"--out '{out}' is a file; curvature writes DIR/{OUTPUT_FILE}: pass a folder, or leave --out out"
            )
        if (folder / OUTPUT_FILE).is_dir():
            raise ConfigError(
                f"'{folder / OUTPUT_FILE}' is a folder; remove or rename it, or choose another --out"
            )
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError as exc:
        raise ConfigError(f"--out '{out}' cannot be used ({exc.strerror}); choose another --out") from None
    if not writable:
        raise ConfigError(f"--out '{out}' is not writable; choose another --out")
    return folder, created


def curvature_command(config: Config, out: str | None = None) -> list[str]:
    """Measure, format, and with ``out`` write ``out/curvature.json``; returns the printed lines. ``out`` is
    checked before the measurement, and a folder created for it is removed when the measurement fails."""
    folder, created = _output_folder(out) if out is not None else (None, False)
    try:
        result = measure_curvature(config)
    except BaseException:
        if folder is not None and created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    lines = format_curvature(result)
    if folder is not None:
        target = folder / OUTPUT_FILE
        temporary = target.with_name(target.name + ".tmp")
        try:
            temporary.write_text(json.dumps(result, indent=2) + "\n")
            temporary.replace(target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise ConfigError(f"cannot write '{target}' ({exc.strerror}); choose another --out") from None
    return lines
