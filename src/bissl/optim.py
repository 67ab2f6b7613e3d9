"""LARS, parameter groups and per-step learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer


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
