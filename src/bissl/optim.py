"""LARS, parameter groups, the one optimiser factory every stage builds through, and per-step schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from bissl.errors import CheckpointError

OPTIMIZER_NAMES = {"lars": "LARS", "sgd": "SGD", "adamw": "AdamW"}
"""The optimiser kinds a stage can be given (``pretrain.optimizer`` and friends), with their display names."""


class LARS(Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017).

    For each parameter p with gradient g: g ← g + wd·p, then g ← g · η‖p‖/‖g‖ when both norms are
    positive, then the momentum buffer b ← μ·b + g and p ← p − lr·b. Groups with ``lars=False`` skip the
    trust ratio and weight decay (biases and normalisation parameters, as common implementations do).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict],
        lr: float,
        *,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "lars": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["lars"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(p)
                    grad_norm = torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (param_norm > 0) & (grad_norm > 0),
                        group["eta"] * param_norm / grad_norm,
                        torch.ones_like(param_norm),
                    )
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def lars_groups(
    module_params: Iterable[tuple[str, nn.Parameter]], exclude_bias_norm: bool = True
) -> list[dict]:
    """Two groups: weights get LARS and weight decay; 1-D parameters (biases, norms) neither, if excluded."""
    adapted: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for _, p in module_params:
        if not p.requires_grad:
            continue
        (plain if exclude_bias_norm and p.ndim <= 1 else adapted).append(p)
    groups: list[dict] = [{"params": adapted}]
    if plain:
        groups.append({"params": plain, "lars": False, "weight_decay": 0.0})
    return groups


def decay_groups(
    module_params: Iterable[tuple[str, nn.Parameter]], exclude_bias_norm: bool = True
) -> list[dict]:
    """AdamW's groups: weights with the optimiser's weight decay; 1-D parameters (biases, norms) with none, if
    excluded. Frozen parameters are left out, as in :func:`lars_groups`."""
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for _, p in module_params:
        if not p.requires_grad:
            continue
        (plain if exclude_bias_norm and p.ndim <= 1 else decayed).append(p)
    groups: list[dict] = [{"params": decayed}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def make_optimizer(
    kind: str,
    named_parameters: Sequence[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    exclude_bias_norm: bool = True,
    lars_eta: float = 0.001,
) -> Optimizer:
    """The optimiser of one stage, by kind (docs/vit.md, "Optimisers per stage").

    - ``lars``: :class:`LARS` over :func:`lars_groups` (``exclude_bias_norm`` exempts 1-D parameters from weight
      decay and the trust ratio), momentum ``momentum``, trust coefficient ``lars_eta``.
    - ``sgd``: ``torch.optim.SGD`` over every given parameter in one group (weight decay on all of them, as the
      warm-up, fine-tuning and upper level always did), momentum ``momentum``.
    - ``adamw``: ``torch.optim.AdamW`` with PyTorch's defaults (betas (0.9, 0.999), eps 1e-8) over
      :func:`decay_groups` (1-D parameters without weight decay when ``exclude_bias_norm``); ``momentum`` is
      not used (AdamW's first-moment decay is beta1).
    """
    if kind == "lars":
        return LARS(
            lars_groups(named_parameters, exclude_bias_norm),
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=lars_eta,
        )
    if kind == "sgd":
        return torch.optim.SGD(
            [p for _, p in named_parameters], lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    if kind == "adamw":
        return torch.optim.AdamW(
            decay_groups(named_parameters, exclude_bias_norm), lr=lr, weight_decay=weight_decay
        )
    raise ValueError(f"unknown optimiser kind {kind!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")


def optimizer_kind(optimizer: Optimizer) -> str:
    """``lars``, ``sgd`` or ``adamw``: the kind :func:`make_optimizer` built."""
    if isinstance(optimizer, LARS):
        return "lars"
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    raise TypeError(f"not an optimiser make_optimizer builds: {type(optimizer).__name__}")


def saved_optimizer_kind(state: dict[str, Any]) -> str | None:
    """The kind of optimiser a saved ``state_dict`` came from, read from its groups' settings (LARS has a trust
    coefficient, AdamW betas, SGD dampening); None when it cannot be told."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not groups or not isinstance(groups[0], dict):
        return None
    group = groups[0]
    if "eta" in group:
        return "lars"
    if "betas" in group:
        return "adamw"
    if "dampening" in group:
        return "sgd"
    return None


def load_optimizer_state(optimizer: Optimizer, state: dict[str, Any], key: str) -> None:
    """Restore ``optimizer`` from a checkpoint's ``state``, refusing in one line a state of another kind of
    optimiser (the config key ``key`` was changed since the checkpoint was written)."""
    saved, current = saved_optimizer_kind(state), optimizer_kind(optimizer)
    if saved is not None and saved != current:
        raise CheckpointError(
            f"the checkpoint to resume holds {OPTIMIZER_NAMES[saved]} optimiser state but this run sets "
            f"{key}={current}; to continue it use {key}={saved}, or choose another --out"
        )
    optimizer.load_state_dict(state)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base: float, final: float) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then cosine from ``base`` to ``final``.

    The warm-up reaches ``base`` at step ``warmup_steps`` (the first step uses base/warmup_steps).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float | None) -> float:
    """Clip the joint gradient norm (no-op when max_norm is None); returns the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        return float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        )
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
