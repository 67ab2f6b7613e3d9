"""Feature extraction: eval-mode forward without gradients, any batch source, modes and stats restored."""

from __future__ import annotations

import copy

import pytest
import torch

from bissl.eval.features import extract_features
from bissl.models import build_backbone


def make_backbone() -> torch.nn.Module:
    backbone = build_backbone("small_resnet", in_channels=1, width=4, blocks=(1, 1))
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return backbone


def test_matches_eval_forward_for_every_batch_source() -> None:
    backbone = make_backbone()
    images = torch.rand(10, 1, 8, 8)
    with torch.no_grad():
        expected = backbone.eval()(images)
        train_mode = copy.deepcopy(backbone).train()(images)
    assert not torch.allclose(expected, train_mode)
    from_tensor = extract_features(backbone, images, batch_size=3)
    chunks = [(images[:4], torch.zeros(4)), (images[4:], torch.zeros(6))]
    from_loader = extract_features(backbone, chunks, batch_size=3)
    from_callable = extract_features(backbone, lambda: iter([images[:7], images[7:]]), batch_size=3)
    for features in (from_tensor, from_loader, from_callable):
        assert features.shape == (10, backbone.feature_dim) and not features.requires_grad
        assert features.dtype == torch.float32 and features.device.type == "cpu"
        assert torch.allclose(features, expected, atol=1e-6)


def test_restores_each_module_mode_and_leaves_running_statistics_alone() -> None:
    backbone = make_backbone().train()
    frozen_norm = next(module for module in backbone.modules() if isinstance(module, torch.nn.BatchNorm2d))
    frozen_norm.eval()
    state_before = {name: value.clone() for name, value in backbone.state_dict().items()}
    extract_features(backbone, torch.rand(5, 1, 8, 8), batch_size=2)
    assert backbone.training and not frozen_norm.training
    assert all(module.training for module in backbone.modules() if module is not frozen_norm)
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, state_before[name]), name


def test_applies_transform_per_batch() -> None:
    backbone = make_backbone()
    raw = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    seen_dtypes: list[torch.dtype] = []

    def to_unit_float(batch: torch.Tensor) -> torch.Tensor:
        seen_dtypes.append(batch.dtype)
        return batch.float() / 255.0

    features = extract_features(backbone, raw, batch_size=4, transform=to_unit_float)
    with torch.no_grad():
        expected = backbone.eval()(raw.float() / 255.0)
    assert seen_dtypes == [torch.uint8, torch.uint8]
    assert torch.allclose(features, expected, atol=1e-6)


def test_empty_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="no images"):
        extract_features(make_backbone(), [], batch_size=4)
