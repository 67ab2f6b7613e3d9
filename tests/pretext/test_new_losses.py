"""VICReg, Barlow Twins and MoCo v3 losses against lightly's loss classes and against per-element loops
(float64, random embeddings); MoCo v3's momentum schedule and target."""

from __future__ import annotations

import math

import pytest
import torch
from lightly.loss import BarlowTwinsLoss, NTXentLoss, VICRegLoss

from bissl.models import build_backbone
from bissl.pretext import MoCoV3, barlow_twins_loss, mocov3_loss, vicreg_loss
from bissl.pretext.momentum import momentum_at

TOLERANCE = 1e-6


def _pair(rows: int = 7, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    # correlated views with small spreads in some dimensions, so the variance hinge is active in a few
    z2 = 0.7 * z1 + 0.5 * torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    scale = torch.tensor([0.2, 1.5, 0.6, 2.0, 0.9], dtype=torch.float64)[:dim]
    return z1 * scale, z2 * scale


def _close(value: torch.Tensor, reference: float) -> bool:
    return abs(float(value) - reference) <= TOLERANCE * max(1.0, abs(reference))


def _naive_vicreg(z1: torch.Tensor, z2: torch.Tensor, lam: float, mu: float, nu: float) -> float:
    rows, dim = z1.shape
    a, b = z1.tolist(), z2.tolist()
    invariance = sum((a[i][j] - b[i][j]) ** 2 for i in range(rows) for j in range(dim)) / (rows * dim)

    def variance_and_covariance(z: list[list[float]]) -> tuple[float, float]:
        means = [sum(z[i][j] for i in range(rows)) / rows for j in range(dim)]
        hinge = 0.0
        for j in range(dim):
            var = sum((z[i][j] - means[j]) ** 2 for i in range(rows)) / (rows - 1)
            hinge += max(0.0, 1.0 - math.sqrt(var + 1e-4))
        covariance = 0.0
        for p in range(dim):
            for q in range(dim):
                if p != q:
                    cov = sum((z[i][p] - means[p]) * (z[i][q] - means[q]) for i in range(rows)) / (rows - 1)
                    covariance += cov**2
        return hinge / dim, covariance / dim

    v1, c1 = variance_and_covariance(a)
    v2, c2 = variance_and_covariance(b)
    return lam * invariance + mu * (v1 + v2) / 2 + nu * (c1 + c2)


@pytest.mark.parametrize(("lam", "mu", "nu"), [(25.0, 25.0, 1.0), (1.0, 3.0, 0.5)])
def test_vicreg_equals_lightly_and_a_per_element_loop(lam: float, mu: float, nu: float) -> None:
    z1, z2 = _pair()
    loss = vicreg_loss(z1, z2, lam, mu, nu)
    # lightly's VICRegLoss follows the official code, as ours does: same terms, same constants
    lightly = VICRegLoss(lambda_param=lam, mu_param=mu, nu_param=nu)(z1, z2)
    assert _close(loss, float(lightly))
    assert _close(loss, _naive_vicreg(z1, z2, lam, mu, nu))
    # the variance hinge is active in some dimensions only, so every term takes part
    assert 0 < int((z1.std(dim=0) < 1).sum()) < z1.shape[1]


def _naive_barlow(z1: torch.Tensor, z2: torch.Tensor, lam: float) -> float:
    rows, dim = z1.shape

    def standardise(z: list[list[float]]) -> list[list[float]]:
        out = [[0.0] * dim for _ in range(rows)]
        for j in range(dim):
            mean = sum(z[i][j] for i in range(rows)) / rows
            var = sum((z[i][j] - mean) ** 2 for i in range(rows)) / rows
            for i in range(rows):
                out[i][j] = (z[i][j] - mean) / math.sqrt(var + 1e-5)
        return out

    a, b = standardise(z1.tolist()), standardise(z2.tolist())
    total = 0.0
    for p in range(dim):
        for q in range(dim):
            c = sum(a[i][p] * b[i][q] for i in range(rows)) / rows
            total += (1 - c) ** 2 if p == q else lam * c**2
    return total


@pytest.mark.parametrize("lam", [0.0051, 0.3])
def test_barlow_twins_equals_lightly_and_a_per_element_loop(lam: float) -> None:
    z1, z2 = _pair()
    loss = barlow_twins_loss(z1, z2, lam)
    # lightly standardises with F.batch_norm in training mode (biased variance, eps 1e-5), as the official
    # code's affine-free BatchNorm and ours do; no adaptation is needed
    lightly = BarlowTwinsLoss(lambda_param=lam)(z1, z2)
    assert _close(loss, float(lightly))
    assert _close(loss, _naive_barlow(z1, z2, lam))


def _naive_mocov3(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, tau: float
) -> float:
    def ctr(q: torch.Tensor, k: torch.Tensor) -> float:
        rows = q.shape[0]
        total = 0.0
        for i in range(rows):
            logits = [float(q[i] @ k[j] / (q[i].norm() * k[j].norm())) / tau for j in range(rows)]
            total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
        return total / rows * 2 * tau

    return ctr(q1, k2) + ctr(q2, k1)


def _lightly_mocov3(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, tau: float
) -> float:
    """lightly has no MoCo v3 loss; its MoCo usage is NTXentLoss with a memory bank of negative keys, whose
    logits are [q·k⁺, q·bank] / τ with the positive first. MoCo v3's negatives of query i are the other
    keys of the batch, so each query gets one call with a bank holding exactly those keys (normalised, as
    lightly normalises only the query and its positive). lightly has no 2τ factor: it is applied here."""

    def ctr(q: torch.Tensor, k: torch.Tensor) -> float:
        rows = q.shape[0]
        loss = NTXentLoss(temperature=tau, memory_bank_size=(rows - 1, q.shape[1]))
        total = 0.0
        for i in range(rows):
            others = torch.cat([k[:i], k[i + 1 :]])
            loss.memory_bank.bank = torch.nn.functional.normalize(others, dim=1)
            total += float(loss(q[i : i + 1], k[i : i + 1]))
        return total / rows * 2 * tau

    return ctr(q1, k2) + ctr(q2, k1)


@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_mocov3_equals_lightly_and_a_per_element_loop(tau: float) -> None:
    q1, q2 = _pair(seed=1)
    k1, k2 = _pair(seed=2)
    loss = mocov3_loss(q1, q2, k1, k2, tau)
    assert _close(loss, _lightly_mocov3(q1, q2, k1, k2, tau))
    assert _close(loss, _naive_mocov3(q1, q2, k1, k2, tau))


def test_mocov3_keys_get_no_gradient() -> None:
    q1, q2 = (t.requires_grad_() for t in _pair(seed=1))
    k1, k2 = (t.requires_grad_() for t in _pair(seed=2))
    mocov3_loss(q1, q2, k1, k2, 1.0).backward()
    assert q1.grad is not None and q2.grad is not None
    assert k1.grad is None and k2.grad is None


def test_momentum_schedules() -> None:
    assert momentum_at(0.99, "constant", 0.7) == 0.99
    assert momentum_at(0.99, "cosine", 0.0) == pytest.approx(0.99, abs=1e-15)
    assert momentum_at(0.99, "cosine", 0.5) == pytest.approx(0.995, abs=1e-15)
    assert momentum_at(0.99, "cosine", 1.0) == pytest.approx(1.0, abs=1e-15)


def _moco() -> MoCoV3:
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", in_channels=1, width=4, blocks=(1,))
    return MoCoV3(backbone, 4, projector_hidden=(8,), projector_dim=6, predictor_hidden=(8,), momentum=0.9)


def test_mocov3_target_moves_only_in_after_step_and_keeps_its_statistics_in_forwards() -> None:
    task = _moco().train()
    before = {k: v.clone() for k, v in task.target.state_dict().items()}
    x = torch.randn(6, 1, 8, 8)
    task.loss(x, x.flip(-1)).backward()
    with torch.no_grad():
        for p in task.trainable_parameters():
            p -= 0.1 * p.grad  # type: ignore[operator]
    # weights and BatchNorm buffers of the target: untouched by the forward and the step
    assert all(torch.equal(v, task.target.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in task.target.parameters())
    task.after_step(0.0)  # cosine schedule at progress 0: m = 0.9
    online = dict(task._online().state_dict())
    for name, value in task.target.state_dict().items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, online[name]), name  # buffers are copied
        else:
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * online[name], atol=1e-7), name
    task.reset_target()
    assert all(torch.equal(v, online[k]) for k, v in task.target.state_dict().items())
