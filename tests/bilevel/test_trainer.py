"""The alternating BiSSL trainer against the method (docs/method.md, "Objectives" to "Pipeline"): an
independent naive implementation, the dense formula with the exact solver, the proximal limit, and what the
upper phase must leave untouched."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bissl.bilevel.trainer import BilevelTrainer, initial_models, parameter_distance
from bissl.config import BilevelConfig
from bissl.pretext import BYOL, DINO, PRETEXT_TASKS, BarlowTwins, MoCoV3, SimCLR, VICReg

DTYPE = torch.float64


class TinyBackbone(nn.Module):
    """conv-BN-ReLU-pool-linear: small enough for dense Hessians, with BatchNorm in the Hessian."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4, 4)
        self.feature_dim = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.tanh(self.bn(self.conv(x))), 2)
        return torch.tanh(self.fc(x.flatten(1)))


def _settings(**overrides: object) -> BilevelConfig:
    base = BilevelConfig(
        alternations=2,
        lower_steps=3,
        upper_steps=2,
        solver_iterations=4,
        lower_batch_size=6,
        upper_batch_size=5,
        lower_warmup_steps=2,
        lower_lr=0.5,
        upper_lr=0.05,
        gamma=0.7,
        lam=0.05,
        damping=0.5,
        clip_grad=10.0,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def _batches(count: int, size: int, seed: int, labels: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        images = torch.randn(size, 1, 4, 4, generator=generator, dtype=DTYPE)
        if labels:
            out.append((images, torch.randint(0, 3, (size,), generator=generator)))
        else:
            out.append((images, images + 0.3 * torch.randn(size, 1, 4, 4, generator=generator, dtype=DTYPE)))
    return out


def _source(
    items: list[tuple[torch.Tensor, torch.Tensor]],
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    iterator: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(items)
    return lambda: next(iterator)


def _build(method: str = "simclr", seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    backbone = TinyBackbone()
    lower: nn.Module
    if method == "simclr":
        lower = SimCLR(backbone, 4, projector_hidden=(5,), projector_dim=3, temperature=0.5)
    elif method == "byol":
        lower = BYOL(backbone, 4, projector_hidden=(5,), projector_dim=3, predictor_hidden=(5,), ema=0.9)
    elif method == "vicreg":
        lower = VICReg(backbone, 4, projector_hidden=(5,), projector_dim=3)
    elif method == "barlow_twins":
        lower = BarlowTwins(backbone, 4, projector_hidden=(5,), projector_dim=3)
    elif method == "mocov3":
        lower = MoCoV3(
            backbone, 4, projector_hidden=(5,), projector_dim=3, predictor_hidden=(5,), momentum=0.9
        )
    else:
        lower = DINO(backbone, 4, projector_hidden=(5,), projector_dim=3, out_dim=6, momentum=0.9)
    lower = lower.to(DTYPE)
    head = nn.Linear(4, 3).to(DTYPE)
    upper_backbone = initial_models(lower, None)  # type: ignore[arg-type]
    return lower, upper_backbone, head


def _trainer(settings: BilevelConfig, method: str = "simclr") -> BilevelTrainer:
    lower, upper_backbone, head = _build(method)
    n_lower = settings.alternations * (settings.lower_steps + 1)
    return BilevelTrainer(
        lower,  # type: ignore[arg-type]
        upper_backbone,
        head,
        F.cross_entropy,
        _source(_batches(n_lower, settings.lower_batch_size, 1, labels=False)),
        _source(
            _batches(settings.alternations * settings.upper_steps, settings.upper_batch_size, 2, labels=True)
        ),
        settings,
        lars_eta=0.02,
    )


# ------------------------------------------------------------------------------------------------
# An independent, naive implementation of the method (docs/method.md, "Objectives" to "Pipeline"), written
# from the text: every HVP rebuilds the forward pass and the gradient graph; CG is per-tensor (layerwise) as
# docs/method.md, "Conjugate gradient", describes.


def _naive_lr(step: int, total: int, warmup: int, base: float, final: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return final + (base - final) * (1 + math.cos(math.pi * min(1.0, t))) / 2


def _clip(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    norm = torch.sqrt(sum((g**2).sum() for g in grads))  # type: ignore[arg-type]
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    return [g * scale for g in grads]


def _naive_run(settings: BilevelConfig) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    lower, upper_backbone, head = _build("simclr")
    s = settings
    lower_data = _batches(s.alternations * (s.lower_steps + 1), s.lower_batch_size, 1, labels=False)
    upper_data = _batches(s.alternations * s.upper_steps, s.upper_batch_size, 2, labels=True)
    lower_params = [p for p in lower.parameters()]
    theta_p = list(lower.backbone.parameters())  # type: ignore[union-attr]
    theta_d = list(upper_backbone.parameters())
    phi_d = list(head.parameters())
    lars_buffers: dict[int, torch.Tensor] = {}
    sgd_buffers: dict[int, torch.Tensor] = {}
    li = ui = 0
    for alternation in range(s.alternations):
        for k in range(s.lower_steps):
            step = alternation * s.lower_steps + k
            lr = _naive_lr(
                step,
                s.alternations * s.lower_steps,
                s.lower_warmup_steps,
                s.lower_lr,
                s.lower_lr * s.lower_final_lr_ratio,
            )
            v1, v2 = lower_data[li]
            li += 1
            prox = sum(((p - q.detach()) ** 2).sum() for p, q in zip(theta_p, theta_d))
            loss = lower.loss(v1, v2) + s.lam / 2 * prox  # type: ignore[operator]
            grads = _clip(list(torch.autograd.grad(loss, lower_params)), s.clip_grad)
            with torch.no_grad():
                for p, g in zip(lower_params, grads):
                    if p.ndim > 1:
                        g = g + s.lower_weight_decay * p
                        pn, gn = p.norm(), g.norm()
                        if pn > 0 and gn > 0:
                            g = g * (0.02 * pn / gn)
                    buf = lars_buffers.get(id(p))
                    buf = g.clone() if buf is None else buf * s.lower_momentum + g
                    lars_buffers[id(p)] = buf
                    p -= lr * buf
        hv1, hv2 = lower_data[li]
        li += 1

        def hvp(
            vector: list[torch.Tensor], hv1: torch.Tensor = hv1, hv2: torch.Tensor = hv2
        ) -> list[torch.Tensor]:
            grads = torch.autograd.grad(lower.loss(hv1, hv2), theta_p, create_graph=True)  # type: ignore[operator]
            return list(torch.autograd.grad(grads, theta_p, grad_outputs=vector))

        for u in range(s.upper_steps):
            step = alternation * s.upper_steps + u
            lr = _naive_lr(
                step, s.alternations * s.upper_steps, 0, s.upper_lr, s.upper_lr * s.upper_final_lr_ratio
            )
            x, y = upper_data[ui]
            ui += 1
            outer = F.cross_entropy(head(lower.backbone(x)), y)  # type: ignore[operator]
            v = list(torch.autograd.grad(outer, theta_p, retain_graph=True))
            head_grad_lower = list(torch.autograd.grad(outer, phi_d))
            # per-tensor CG on x + H x / (lam + damping) = v, x0 = 0
            xs = [torch.zeros_like(t) for t in v]
            rs = [t.clone() for t in v]
            ds = [t.clone() for t in v]
            for _ in range(s.solver_iterations):
                hd = hvp(ds)
                ads = [d + h / (s.lam + s.damping) for d, h in zip(ds, hd)]
                for i in range(len(xs)):
                    rr = (rs[i] * rs[i]).sum()
                    alpha = rr / ((ds[i] * ads[i]).sum() + 1e-12)
                    xs[i] = xs[i] + alpha * ds[i]
                    r_new = rs[i] - alpha * ads[i]
                    beta = (r_new * r_new).sum() / (rr + 1e-12)
                    ds[i] = r_new + beta * ds[i]
                    rs[i] = r_new
            xs = [torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0) for t in xs]
            inner = F.cross_entropy(head(upper_backbone(x)), y)
            direct = torch.autograd.grad(inner, theta_d + phi_d)
            grads = [a + s.gamma * b for a, b in zip(xs + head_grad_lower, direct)]
            grads = _clip(grads, s.clip_grad)
            with torch.no_grad():
                for p, g in zip(theta_d + phi_d, grads):
                    g = g + s.upper_weight_decay * p
                    buf = sgd_buffers.get(id(p))
                    buf = g.clone() if buf is None else buf * s.upper_momentum + g
                    sgd_buffers[id(p)] = buf
                    p -= lr * buf
    return [p.detach() for p in theta_p], [p.detach() for p in theta_d], [p.detach() for p in phi_d]


def _max_relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.detach() - y).norm() / y.norm().clamp_min(1e-30)) for x, y in zip(a, b))


@pytest.mark.parametrize("hvp_mode", ["reuse", "recompute"])
@pytest.mark.parametrize("hvp_scope", ["phase", "step"])
def test_matches_naive_implementation_after_two_alternations(hvp_mode: str, hvp_scope: str) -> None:
    settings = _settings(hvp_mode=hvp_mode, hvp_scope=hvp_scope)
    trainer = _trainer(settings)
    for _ in range(settings.alternations):
        trainer.alternate()
    theta_p, theta_d, phi_d = _naive_run(settings)
    assert _max_relative(list(trainer.lower.backbone.parameters()), theta_p) < 1e-5
    assert _max_relative(list(trainer.upper_backbone.parameters()), theta_d) < 1e-5
    assert _max_relative(list(trainer.upper_head.parameters()), phi_d) < 1e-5
    # and the run really moved: θ_P differs from θ_D, both from the start
    assert parameter_distance(trainer.lower.backbone, trainer.upper_backbone) > 0


def test_exact_solver_step_equals_dense_formula() -> None:
    settings = _settings(
        alternations=1,
        lower_steps=1,
        upper_steps=1,
        solver="exact",
        upper_momentum=0.0,
        upper_weight_decay=0.0,
        clip_grad=1e9,
    )
    trainer = _trainer(settings)
    trainer.lower_phase()
    hessian_views = _batches(2, settings.lower_batch_size, 1, labels=False)[1]
    x, y = _batches(1, settings.upper_batch_size, 2, labels=True)[0]
    lower = trainer.lower
    theta = list(lower.backbone.parameters())
    shapes = [p.shape for p in theta]
    sizes = [p.numel() for p in theta]
    flat0 = torch.cat([p.detach().reshape(-1) for p in theta])

    def pretext_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, sizes)
        params = {
            name: c.view(shape)
            for (name, _), c, shape in zip(lower.backbone.named_parameters(), chunks, shapes)
        }
        buffers = {name: b.clone() for name, b in lower.backbone.named_buffers()}
        features = torch.func.functional_call(
            lower.backbone, {**params, **buffers}, (torch.cat(hessian_views),)
        )
        head_state = {name: t.clone() for name, t in lower.head.named_buffers()}
        head_params = dict(lower.head.named_parameters())
        z = torch.func.functional_call(lower.head, {**head_params, **head_state}, (features,))
        from bissl.pretext import nt_xent

        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, 0.5)

    hessian = torch.autograd.functional.hessian(pretext_of, flat0)
    head = trainer.upper_head
    outer = F.cross_entropy(head(lower.backbone(x)), y)
    v = torch.cat([g.reshape(-1) for g in torch.autograd.grad(outer, theta, retain_graph=True)])
    head_lower = torch.autograd.grad(outer, list(head.parameters()))
    a = torch.eye(flat0.numel(), dtype=DTYPE) + hessian / (settings.lam + settings.damping)
    solution = torch.linalg.solve(a, v)
    inner = F.cross_entropy(head(trainer.upper_backbone(x)), y)
    direct = torch.autograd.grad(inner, [*trainer.upper_backbone.parameters(), *head.parameters()])
    n_theta = len(theta)
    upper_before = torch.cat([p.detach().reshape(-1) for p in trainer.upper_backbone.parameters()])
    direct_theta = torch.cat([d.reshape(-1) for d in direct[:n_theta]])
    expected_theta = upper_before - settings.upper_lr * (solution + settings.gamma * direct_theta)
    expected_head = [
        p.detach() - settings.upper_lr * (a_ + settings.gamma * b_)
        for p, a_, b_ in zip(head.parameters(), head_lower, direct[n_theta:])
    ]

    trainer.upper_batches = _source([(x, y)])
    trainer.hessian_batches = _source([hessian_views])
    trainer.upper_phase()
    got_theta = torch.cat([p.detach().reshape(-1) for p in trainer.upper_backbone.parameters()])
    assert torch.allclose(got_theta, expected_theta, rtol=1e-8, atol=1e-10)
    for got, want in zip(head.parameters(), expected_head):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)


def test_huge_lambda_keeps_lower_backbone_at_upper() -> None:
    """A stiff proximal term (lr·λ = 1, stable for momentum SGD) pins θ_P to θ_D; a weak one lets it drift."""
    common = {"alternations": 1, "lower_steps": 30, "lower_lr": 1e-3}
    pinned = _trainer(_settings(lam=1e3, **common))  # type: ignore[arg-type]
    pinned.lower_batches = _source(_batches(30, 6, 1, labels=False))
    pinned.lower_phase()
    free = _trainer(_settings(lam=1e-6, **common))  # type: ignore[arg-type]
    free.lower_batches = _source(_batches(30, 6, 1, labels=False))
    free.lower_phase()
    pinned_distance = parameter_distance(pinned.lower.backbone, pinned.upper_backbone)
    free_distance = parameter_distance(free.lower.backbone, free.upper_backbone)
    assert free_distance > 0
    assert pinned_distance < 0.1 * free_distance


@pytest.mark.parametrize("method", PRETEXT_TASKS)
def test_upper_phase_moves_only_the_upper_level(method: str) -> None:
    settings = _settings(alternations=1)
    trainer = _trainer(settings, method)
    lower_start = copy.deepcopy(trainer.lower.state_dict())
    upper_start = copy.deepcopy(trainer.upper_backbone.state_dict())
    head_start = copy.deepcopy(trainer.upper_head.state_dict())
    trainer.lower_phase()
    after_lower = copy.deepcopy(trainer.lower.state_dict())
    assert any(not torch.equal(after_lower[k], lower_start[k]) for k in lower_start if "backbone" in k)
    assert all(torch.equal(v, trainer.upper_backbone.state_dict()[k]) for k, v in upper_start.items())
    trainer.upper_phase()
    # the lower model (θ_P, φ_P, BN statistics, momentum target) is bit-identical after the upper phase
    for key, value in trainer.lower.state_dict().items():
        assert torch.equal(value, after_lower[key]), key
    assert any(
        not torch.equal(v, trainer.upper_backbone.state_dict()[k])
        for k, v in upper_start.items()
        if v.is_floating_point()
    )
    assert any(not torch.equal(v, trainer.upper_head.state_dict()[k]) for k, v in head_start.items())
