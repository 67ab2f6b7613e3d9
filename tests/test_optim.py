"""LARS and the per-step schedules against hand computations."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from bissl.optim import LARS, lars_groups, warmup_cosine


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


def test_lars_without_exclusion_adapts_and_decays_biases_and_norms_as_the_reference() -> None:
    """exclude_bias_norm=False (the paper configs): one group; a bias and a BatchNorm weight get weight decay and
    the trust ratio like any weight, over two steps with momentum, in float64 against a hand-written update."""
    norm = nn.BatchNorm1d(3).double()
    bias = nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))
    named = [("norm.weight", norm.weight), ("norm.bias", norm.bias), ("bias", bias)]
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    groups = lars_groups(named, exclude_bias_norm=False)
    assert len(groups) == 1 and len(groups[0]["params"]) == 3
    optimizer = LARS(groups, lr=0.5, momentum=0.9, weight_decay=1e-2, eta=0.001)
    generator = torch.Generator().manual_seed(0)
    expected = {name: p.detach().clone() for name, p in named}
    buffers: dict[str, torch.Tensor] = {}
    for _ in range(2):
        for name, p in named:
            p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            step = p.grad + 1e-2 * expected[name]
            step = step * (0.001 * expected[name].norm() / step.norm())
            buffers[name] = step if name not in buffers else 0.9 * buffers[name] + step
            expected[name] = expected[name] - 0.5 * buffers[name]
        optimizer.step()
    for name, p in named:
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-12, atol=1e-14)


def test_warmup_cosine_endpoints() -> None:
    base, final, total, warm = 1.0, 0.001, 100, 10
    assert math.isclose(warmup_cosine(0, total, warm, base, final), 0.1)
    assert math.isclose(warmup_cosine(9, total, warm, base, final), 1.0)
    assert math.isclose(warmup_cosine(10, total, warm, base, final), 1.0)
    assert math.isclose(warmup_cosine(55, total, warm, base, final), (base + final) / 2)
    assert math.isclose(warmup_cosine(100, total, warm, base, final), final)
    values = [warmup_cosine(s, total, warm, base, final) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(values))
