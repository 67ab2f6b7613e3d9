"""SimCLR's NT-Xent and BYOL's loss and EMA against direct computations."""

from __future__ import annotations

import math

import torch
from torch import nn

from bissl.models import build_backbone
from bissl.pretext import BYOL, SimCLR, nt_xent
from bissl.pretext.byol import byol_loss, ema_update


def _direct_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Per anchor: -log(exp(s_pos/T) / sum over all other 2N-1 embeddings of exp(s/T))."""
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = i + n if i < n else i - n
        numerator = 0.0
        denominator = 0.0
        for j in range(2 * n):
            if j == i:
                continue
            sim = float(z[i] @ z[j] / (z[i].norm() * z[j].norm()))
            value = math.exp(sim / temperature)
            denominator += value
            if j == positive:
                numerator = value
        total += -math.log(numerator / denominator)
    return total / (2 * n)


def test_nt_xent_equals_per_pair_computation() -> None:
    z1 = torch.randn(6, 5, dtype=torch.float64)
    z2 = torch.randn(6, 5, dtype=torch.float64)
    for temperature in (0.1, 0.5):
        assert math.isclose(
            float(nt_xent(z1, z2, temperature)), _direct_nt_xent(z1, z2, temperature), rel_tol=1e-10
        )


def test_nt_xent_is_low_for_matching_views() -> None:
    z = torch.randn(8, 16)
    assert float(nt_xent(z, z + 1e-3 * torch.randn_like(z), 0.1)) < float(nt_xent(z, torch.randn(8, 16), 0.1))


def test_byol_loss_hand_computed() -> None:
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    # cosines 0 and 1: (2 - 0 + 2 - 2) / 2 = 1
    assert math.isclose(float(byol_loss(p, t)), 1.0, rel_tol=1e-7)


def test_ema_update_hand_computed() -> None:
    online = nn.Linear(2, 1, bias=False)
    target = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.weight.copy_(torch.tensor([[3.0, -1.0]]))
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, torch.tensor([[0.9 * 3 + 0.1 * 1, 0.9 * -1 + 0.1 * 2]]))


def test_byol_target_moves_only_in_after_step() -> None:
    backbone = build_backbone("small_resnet", in_channels=1, width=4, blocks=(1,))
    task = BYOL(backbone, 4, projector_hidden=(8,), projector_dim=8, predictor_hidden=(8,), ema=0.5)
    before = [p.clone() for p in task.target.parameters()]
    x = torch.randn(4, 1, 8, 8)
    loss = task.loss(x, x.flip(-1))
    loss.backward()
    with torch.no_grad():
        for p in task.trainable_parameters():
            p -= 0.1 * p.grad  # type: ignore[operator]
    assert all(torch.equal(a, b) for a, b in zip(before, task.target.parameters()))
    assert all(p.grad is None for p in task.target.parameters())
    task.after_step(0.0)
    assert any(not torch.equal(a, b) for a, b in zip(before, task.target.parameters()))
    task.reset_target()
    online = [*task.backbone.parameters(), *task.head["projector"].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(online, task.target.parameters()))


def test_simclr_loss_has_backbone_and_head_gradients() -> None:
    backbone = build_backbone("small_resnet", in_channels=1, width=4, blocks=(1,))
    task = SimCLR(backbone, 4, projector_hidden=(8,), projector_dim=8, temperature=0.5)
    x = torch.randn(6, 1, 8, 8)
    task.loss(x, x + 0.1 * torch.randn_like(x)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in task.trainable_parameters())
