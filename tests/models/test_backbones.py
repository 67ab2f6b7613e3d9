"""Backbones map (N, C, H, W) images to (N, feature_dim) features for every name, stem and channel count;
a saved backbone loads into a freshly built one; unknown names are refused with the allowed values."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from bissl.models import BACKBONES, build_backbone, feature_dim, linear_head, mlp


@pytest.mark.parametrize(
    ("width", "blocks", "expected"),
    [(8, (1, 1, 1), 32), (4, (2, 1), 8), (16, (1,), 16), (6, (1, 1, 1, 1), 48)],
)
def test_small_resnet_feature_dim_doubles_per_stage(
    width: int, blocks: tuple[int, ...], expected: int
) -> None:
    backbone = build_backbone("small_resnet", in_channels=1, width=width, blocks=blocks)
    assert feature_dim(backbone) == expected
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 1, 16, 16))
    assert features.shape == (2, expected)


@pytest.mark.parametrize(("name", "expected"), [("resnet18", 512), ("resnet50", 2048)])
@pytest.mark.parametrize(("stem", "channels"), [("small", 3), ("imagenet", 1)])
def test_torchvision_resnets_return_their_feature_dim(
    name: str, expected: int, stem: str, channels: int
) -> None:
    backbone = build_backbone(name, in_channels=channels, stem=stem)
    assert feature_dim(backbone) == expected
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, channels, 32, 32))
    assert features.shape == (1, expected)


def test_a_saved_backbone_loads_into_a_fresh_one() -> None:
    torch.manual_seed(0)
    saved = build_backbone("small_resnet", width=4, blocks=(1, 1))
    torch.manual_seed(1)
    fresh = build_backbone("small_resnet", width=4, blocks=(1, 1))
    images = torch.randn(2, 3, 8, 8)
    saved.eval()
    fresh.eval()
    with torch.no_grad():
        assert not torch.allclose(saved(images), fresh(images))
        fresh.load_state_dict(saved.state_dict())  # no wrapper keys
        assert torch.equal(saved(images), fresh(images))


def test_unknown_backbone_and_stem_name_the_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"model.backbone='vit_huge'.*" + re.escape(", ".join(BACKBONES))):
        build_backbone("vit_huge")
    with pytest.raises(ValueError, match=r"model.stem='tiny'.*imagenet, small"):
        build_backbone("resnet18", stem="tiny")


def test_heads_have_the_asked_shapes() -> None:
    projector = mlp(32, (16, 16), 8, last_bn=True)
    linears = [m for m in projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 16), (16, 16), (16, 8)]
    assert all(m.bias is None for m in linears)  # hidden layers (hidden_bias=False) and the BN-ended output
    assert isinstance(projector[-1], nn.BatchNorm1d) and not projector[-1].affine
    projector.eval()
    assert projector(torch.randn(4, 32)).shape == (4, 8)
    head = linear_head(8, 5)
    assert (head.in_features, head.out_features) == (8, 5) and head.bias is not None
