"""DINO: its loss against lightly's ``DINOLoss`` and a per-element loop (float64), the centre update and the
teacher-temperature warm-up against lightly's conventions, the teacher and centre moving only in
``after_step``, the weight-normalised last layer against PyTorch's parametrisation, and the refusal of local
crops."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from lightly.loss import DINOLoss
from torch import nn

from bissl.config import load_config
from bissl.errors import ConfigError
from bissl.models import build_backbone
from bissl.models.heads import WeightNormLinear
from bissl.pretext import DINO, dino_loss

TOLERANCE = 1e-6


def _logits(views: int, rows: int = 5, dim: int = 6, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, dim, generator=generator, dtype=torch.float64) for _ in range(views)]


def _close(value: torch.Tensor | float, reference: float) -> bool:
    return abs(float(torch.as_tensor(value).detach()) - reference) <= TOLERANCE * max(1.0, abs(reference))


def _naive_dino(
    student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor, tau_s: float, tau_t: float
) -> float:
    """Mean over the ordered pairs (teacher view a, student view b ≠ a) and the rows of
    −Σ_k softmax((t − c)/τ_t)_k log softmax(s/τ_s)_k, written element by element."""
    c = center.reshape(-1).tolist()
    total, terms = 0.0, 0
    for a, t_view in enumerate(teacher):
        for b, s_view in enumerate(student):
            if a == b:
                continue
            rows = t_view.shape[0]
            pair = 0.0
            for i in range(rows):
                t = [(v - c[k]) / tau_t for k, v in enumerate(t_view[i].tolist())]
                t_max = max(t)
                t_norm = sum(math.exp(v - t_max) for v in t)
                q = [math.exp(v - t_max) / t_norm for v in t]
                s = [v / tau_s for v in s_view[i].tolist()]
                s_max = max(s)
                log_norm = s_max + math.log(sum(math.exp(v - s_max) for v in s))
                pair += -sum(q[k] * (s[k] - log_norm) for k in range(len(s)))
            total += pair / rows
            terms += 1
    return total / terms


def _lightly(tau_t: float, tau_s: float, center: torch.Tensor, **kwargs: float) -> DINOLoss:
    """lightly's loss with our centre loaded: its centre buffer is (1, 1, dim), ours (1, dim)."""
    loss = DINOLoss(output_dim=center.shape[1], teacher_temp=tau_t, student_temp=tau_s, **kwargs)
    loss.center = center.reshape(1, 1, -1).clone()
    return loss


@pytest.mark.parametrize("tau_t", [0.04, 0.07])
@pytest.mark.parametrize("local_views", [0, 2])
def test_dino_loss_equals_lightly_and_a_per_element_loop(tau_t: float, local_views: int) -> None:
    teacher = _logits(2, seed=1)
    student = _logits(2 + local_views, seed=2)
    center = 0.3 * _logits(1, rows=1, seed=3)[0]
    loss = dino_loss(student, teacher, center, 0.1, tau_t)
    # lightly averages over its (teacher view × student view) matrix without the diagonal and over the rows,
    # as the DINO authors' code does: (2·V − 2) terms, each a row mean; the same average as ours. It turns the
    # temperature into a float32 tensor (0.04 becomes 0.039999999), a relative change of 2e-8 in the loss.
    lightly = _lightly(tau_t, 0.1, center)(teacher_out=teacher, student_out=student, teacher_temp=tau_t)
    assert _close(loss, float(lightly))
    assert _close(loss, _naive_dino(student, teacher, center, 0.1, tau_t))


def test_teacher_gets_no_gradient_and_the_student_does() -> None:
    teacher = [t.requires_grad_() for t in _logits(2, seed=1)]
    student = [s.requires_grad_() for s in _logits(2, seed=2)]
    dino_loss(student, teacher, torch.zeros(1, 6, dtype=torch.float64), 0.1, 0.04).backward()
    assert all(s.grad is not None for s in student)
    assert all(t.grad is None for t in teacher)


def _dino(**kwargs: float) -> DINO:
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", in_channels=1, width=4, blocks=(1,))
    task = DINO(backbone, 4, projector_hidden=(8,), projector_dim=5, out_dim=6, **kwargs).double().train()
    with torch.no_grad():  # a teacher that differs from the student and a centre away from 0
        for p in task.target.parameters():
            p.add_(0.1 * torch.randn_like(p))
        task.center.copy_(0.5 * torch.randn_like(task.center))
    return task


def test_task_loss_and_centre_update_equal_lightly() -> None:
    """The task's loss on its own student and teacher logits is lightly's; lightly updates its centre inside
    its forward (as the DINO authors' code does), ours records the batch mean in ``loss`` and folds it in in
    ``after_step``: after one step both centres agree (the same rule, c ← 0.9c + 0.1·mean over both views'
    rows of the teacher's outputs)."""
    task = _dino(teacher_temperature=0.06, warmup_teacher_temperature=0.06)
    generator = torch.Generator().manual_seed(4)
    view1 = torch.randn(5, 1, 8, 8, generator=generator, dtype=torch.float64)
    view2 = view1 + 0.3 * torch.randn(view1.shape, generator=generator, dtype=torch.float64)
    both = torch.cat([view1, view2])
    with torch.no_grad():
        student = task.head["projector"](task.backbone(both)).chunk(2)
        teacher = task.target_outputs(both).chunk(2)
    reference = _lightly(0.06, 0.1, task.center, center_momentum=0.9)
    expected = reference(teacher_out=list(teacher), student_out=list(student), teacher_temp=0.06)
    loss = task.loss(view1, view2)
    assert _close(loss, float(expected))
    task.after_step(0.5)
    assert torch.allclose(task.center, reference.center.reshape(1, -1), rtol=0, atol=1e-12)


def test_teacher_temperature_warm_up_matches_lightlys_epoch_schedule() -> None:
    """lightly (and the DINO authors' code) take τ_t per epoch from linspace(warm-up value, final value, E) for
    the first E epochs, so the final value is reached at epoch E − 1. With dino_warmup_fraction = (E − 1) /
    epochs and progress = epoch / epochs the values are the same; the warm-up ends at the fraction given."""
    epochs, warm_epochs = 10, 4
    task = _dino(
        warmup_teacher_temperature=0.04,
        teacher_temperature=0.07,
        warmup_fraction=(warm_epochs - 1) / epochs,
    )
    assert float(task.teacher_temperature) == pytest.approx(0.04, abs=1e-15)
    center = torch.zeros(1, 6, dtype=torch.float64)
    teacher, student = _logits(2, seed=5), _logits(2, seed=6)
    reference = DINOLoss(
        output_dim=6, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=warm_epochs
    )
    for epoch in range(epochs):
        tau = task.teacher_temperature_at(epoch / epochs)
        reference.center = center.reshape(1, 1, -1).clone()
        expected = reference(teacher_out=teacher, student_out=student, epoch=epoch)
        assert _close(dino_loss(student, teacher, center, 0.1, tau), float(expected)), epoch
    assert task.teacher_temperature_at(0.15) == pytest.approx(0.04 + 0.03 * 0.15 / 0.3, abs=1e-15)
    assert task.teacher_temperature_at(1.0) == 0.07
    task.after_step(0.15)  # the next step's temperature, kept in a buffer (checkpoints carry it)
    assert float(task.teacher_temperature) == pytest.approx(task.teacher_temperature_at(0.15), abs=1e-15)
    task.reset_target()  # a new stage (the bilevel stage) restarts the schedule
    assert float(task.teacher_temperature) == pytest.approx(0.04, abs=1e-15)
    assert _dino(teacher_temperature=0.07).teacher_temperature_at(0.0) == 0.07  # no warm-up: fraction 0


def test_teacher_and_centre_move_only_in_after_step_and_keep_their_statistics_in_forwards() -> None:
    task = _dino()
    target_before = {k: v.clone() for k, v in task.target.state_dict().items()}
    center_before = task.center.clone()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    task.loss(x, x.flip(-1)).backward()
    with torch.no_grad():
        for p in task.trainable_parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
        batch_mean = task.target_outputs(torch.cat([x, x.flip(-1)])).mean(dim=0, keepdim=True)
    # weights and BatchNorm buffers of the teacher, and the centre: untouched by the forward and the step
    assert all(torch.equal(v, task.target.state_dict()[k]) for k, v in target_before.items())
    assert torch.equal(task.center, center_before)
    assert all(p.grad is None for p in task.target.parameters())
    task.after_step(0.0)  # cosine schedule at progress 0: m = 0.996
    online = dict(task._online().state_dict())
    for name, value in task.target.state_dict().items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked", "weight_g")):
            assert torch.equal(value, online[name]), name  # buffers are copied
        else:
            assert torch.allclose(value, 0.996 * target_before[name] + 0.004 * online[name], atol=1e-12), name
    assert torch.allclose(task.center, 0.9 * center_before + 0.1 * batch_mean, atol=1e-12)
    moved = task.center.clone()
    task.after_step(0.1)  # no loss since: the batch mean was spent, the centre stays
    assert torch.equal(task.center, moved)


def test_weight_normalised_layer_equals_pytorchs_parametrisation_and_survives_deepcopy() -> None:
    torch.manual_seed(0)
    layer = WeightNormLinear(5, 4, train_scale=True).double()
    with torch.no_grad():
        layer.weight_g.mul_(torch.rand(4, 1, dtype=torch.float64) + 0.5)
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(5, 4, bias=False).double())
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(layer.weight_g)
        reference.parametrizations.weight.original1.copy_(layer.weight_v)
    x = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(layer(x), reference(x), rtol=0, atol=1e-14)
    copied = copy.deepcopy(layer)
    assert torch.equal(copied(x), layer(x)) and copied.weight_v is not layer.weight_v
    fixed = WeightNormLinear(5, 4)
    assert [name for name, _ in fixed.named_parameters()] == ["weight_v"]
    assert torch.allclose(fixed.normalised_weight().norm(dim=1), torch.ones(4), atol=1e-6)


def test_local_crops_are_refused_in_one_line() -> None:
    assert load_config(None, ["pretext.method=dino"]).pretext.dino_local_crops == 0
    with pytest.raises(ConfigError) as error:
        load_config(None, ["pretext.method=dino", "pretext.dino_local_crops=2"])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "config key 'pretext.dino_local_crops' must be 0 (multi-crop is not implemented"
    )
