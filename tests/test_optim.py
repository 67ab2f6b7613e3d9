"""LARS and the per-step schedules against hand computations; the optimiser factory against the optimisers
built directly."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from bissl.errors import CheckpointError
from bissl.optim import (
    LARS,
    decay_groups,
    lars_groups,
    load_optimizer_state,
    make_optimizer,
    optimizer_kind,
    saved_optimizer_kind,
    warmup_cosine,
)


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


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        inputs = torch.randn(8, 5, generator=generator)
        targets = torch.randint(0, 3, (8,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("exclude", [True, False])
def test_the_factory_builds_lars_and_sgd_exactly_as_the_stages_built_them_before(exclude: bool) -> None:
    """Same groups, same settings, bit-identical weights and state after a few steps."""
    cases = {
        "lars": lambda m: LARS(
            lars_groups(m.named_parameters(), exclude), lr=0.3, momentum=0.8, weight_decay=1e-3, eta=0.02
        ),
        "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.3, momentum=0.8, weight_decay=1e-3),
    }
    for kind, direct in cases.items():
        a, b = _model(), _model()
        built = make_optimizer(
            kind,
            list(a.named_parameters()),
            lr=0.3,
            momentum=0.8,
            weight_decay=1e-3,
            exclude_bias_norm=exclude,
            lars_eta=0.02,
        )
        reference = direct(b)
        assert type(built) is type(reference) and optimizer_kind(built) == kind
        assert [
            {k: v for k, v in g.items() if k != "params"} for g in built.state_dict()["param_groups"]
        ] == [{k: v for k, v in g.items() if k != "params"} for g in reference.state_dict()["param_groups"]]
        for left, right in zip(_train(a, built), _train(b, reference), strict=True):
            assert torch.equal(left, right), kind


def test_adamw_has_pytorch_defaults_and_no_weight_decay_on_biases_and_norms() -> None:
    model = _model()
    named = list(model.named_parameters())
    optimizer = make_optimizer("adamw", named, lr=1e-3, weight_decay=0.05, momentum=0.9)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer_kind(optimizer) == "adamw"
    decayed, plain = optimizer.param_groups
    assert [p.ndim for p in decayed["params"]] == [2, 2] and decayed["weight_decay"] == 0.05
    assert all(p.ndim == 1 for p in plain["params"]) and len(plain["params"]) == 4
    assert plain["weight_decay"] == 0.0
    for group in optimizer.param_groups:
        assert (group["betas"], group["eps"], group["lr"], group["amsgrad"]) == (
            (0.9, 0.999),
            1e-8,
            1e-3,
            False,
        )
    assert (
        len(
            make_optimizer(
                "adamw", named, lr=1e-3, weight_decay=0.05, momentum=0.9, exclude_bias_norm=False
            ).param_groups
        )
        == 1
    )
    # the same updates as torch.optim.AdamW over the same groups
    reference_model = _model()
    reference = torch.optim.AdamW(
        decay_groups(reference_model.named_parameters()), lr=1e-3, weight_decay=0.05
    )
    for left, right in zip(_train(model, optimizer), _train(reference_model, reference), strict=True):
        assert torch.equal(left, right)


def test_frozen_parameters_are_left_out_of_adamw_groups() -> None:
    model = _model()
    model[0].requires_grad_(False)
    optimizer = make_optimizer(
        "adamw", list(model.named_parameters()), lr=1e-3, weight_decay=0.0, momentum=0.0
    )
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown optimiser kind 'adam'"):
        make_optimizer("adam", list(_model().named_parameters()), lr=1.0, weight_decay=0.0, momentum=0.0)


def test_saved_state_tells_its_kind_and_another_kind_is_refused_in_one_line() -> None:
    states = {}
    for kind in ("lars", "sgd", "adamw"):
        model = _model()
        optimizer = make_optimizer(
            kind, list(model.named_parameters()), lr=0.1, weight_decay=0.0, momentum=0.9
        )
        _train(model, optimizer, steps=1)
        states[kind] = optimizer.state_dict()
        assert saved_optimizer_kind(states[kind]) == kind
    assert saved_optimizer_kind({}) is None
    model = _model()
    adamw = make_optimizer("adamw", list(model.named_parameters()), lr=0.1, weight_decay=0.0, momentum=0.9)
    load_optimizer_state(adamw, states["adamw"], "finetune.optimizer")
    assert len(adamw.state) == 6
    with pytest.raises(CheckpointError) as error:
        load_optimizer_state(adamw, states["sgd"], "finetune.optimizer")
    message = str(error.value)
    assert "holds SGD optimiser state but this run sets finetune.optimizer=adamw" in message
    assert "use finetune.optimizer=sgd" in message and "\n" not in message
