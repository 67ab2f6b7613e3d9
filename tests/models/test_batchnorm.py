"""``recompute_batchnorm_statistics``: the running statistics become the exact average over the batches at the
current weights; parameters, training flags and momenta stay as they were, and a model without BatchNorm is
neither run nor changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bissl.models import batch_norm_layers, recompute_batchnorm_statistics


def test_recomputed_statistics_are_the_average_over_the_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU(), nn.Flatten())
    model.eval()
    batches = [torch.randn(4, 2, 6, 6) for _ in range(3)]
    weights = [p.detach().clone() for p in model.parameters()]
    seen = recompute_batchnorm_statistics(model, batches)
    assert seen == 12
    with torch.no_grad():
        outputs = [model[0](b) for b in batches]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    variances = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outputs]).mean(0)
    norm = model[1]
    assert torch.allclose(norm.running_mean, means, atol=1e-6)
    assert torch.allclose(norm.running_var, variances, atol=1e-6)
    assert norm.momentum == 0.3 and not model.training and not norm.training
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


class _Counting(nn.Module):
    """A model without BatchNorm that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x)


def test_a_model_without_batchnorm_is_left_untouched() -> None:
    torch.manual_seed(0)
    model = _Counting()
    model.eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert recompute_batchnorm_statistics(model, [torch.randn(5, 4) for _ in range(2)]) == 0
    assert model.calls == 0  # not run at all
    assert not model.training and not model.linear.training
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], value) for name, value in before.items())


def test_layers_without_running_statistics_are_not_counted_and_not_reset() -> None:
    tracked = nn.BatchNorm1d(3)
    untracked = nn.BatchNorm1d(3, track_running_stats=False)
    model = nn.Sequential(nn.Linear(2, 3), untracked, tracked)
    assert batch_norm_layers(model) == [tracked]
    tracked.running_mean.fill_(7.0)
    recompute_batchnorm_statistics(model, [torch.randn(8, 2)])
    assert not torch.allclose(tracked.running_mean, torch.full((3,), 7.0))
    assert untracked.running_mean is None


def test_no_batches_is_an_error_and_restores_the_model() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, momentum=0.2))
    model.eval()
    with pytest.raises(ValueError, match="at least one batch"):
        recompute_batchnorm_statistics(model, [])
    assert model[1].momentum == 0.2 and not model.training and not model[1].training
