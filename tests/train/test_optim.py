"""LARS and the per-step schedules against hand computations."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from bissl.train.optim import LARS, lars_groups, warmup_cosine


def test_lars_step_hand_computed() -> None:
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.6, 0.8]])
    bias.grad = torch.tensor([0.5])
    groups = lars_groups([("w", weight), ("b", bias)], exclude_bias_norm=True)
    optimizer = LARS(groups, lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.02)
    optimizer.step()
    # weight: g = grad + 0.01 * w = [0.63, 0.84]; |g| = 1.05; trust = 0.02 * 5 / 1.05
    g = torch.tensor([[0.63, 0.84]])
    expected = torch.tensor([[3.0, 4.0]]) - 0.1 * g * (0.02 * 5 / 1.05)
    assert torch.allclose(weight.detach(), expected, atol=1e-7)
    # bias: no weight decay, no trust ratio
    assert torch.allclose(bias.detach(), torch.tensor([1.0 - 0.1 * 0.5]))
    # second step uses momentum: buffer = 0.9 * b1 + g2
    bias.grad = torch.tensor([0.5])
    optimizer.step()
    assert torch.allclose(bias.detach(), torch.tensor([0.95 - 0.1 * (0.9 * 0.5 + 0.5)]))


def test_warmup_cosine_endpoints() -> None:
    base, final, total, warm = 1.0, 0.001, 100, 10
    assert math.isclose(warmup_cosine(0, total, warm, base, final), 0.1)
    assert math.isclose(warmup_cosine(9, total, warm, base, final), 1.0)
    assert math.isclose(warmup_cosine(10, total, warm, base, final), 1.0)
    assert math.isclose(warmup_cosine(55, total, warm, base, final), (base + final) / 2)
    assert math.isclose(warmup_cosine(100, total, warm, base, final), final)
    values = [warmup_cosine(s, total, warm, base, final) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(values))
