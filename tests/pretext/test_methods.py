"""Every pretext method built by name: its module layout (which checkpoint import relies on), a finite loss with
gradients on every trainable parameter, and the momentum target of BYOL and MoCo v3."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bissl.config import PretextConfig
from bissl.models import build_backbone, feature_dim
from bissl.pretext import BYOL, PRETEXT_TASKS, BarlowTwins, MoCoV3, SimCLR, VICReg, build_pretext

CLASSES = {"simclr": SimCLR, "byol": BYOL, "vicreg": VICReg, "barlow_twins": BarlowTwins, "mocov3": MoCoV3}


def _task(method: str, **overrides: object) -> nn.Module:
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", in_channels=1, width=4, blocks=(1,))
    config = PretextConfig(
        method=method,  # type: ignore[arg-type]
        projector_hidden=[8],
        projector_dim=6,
        predictor_hidden=[8],
        **overrides,  # type: ignore[arg-type]
    )
    return build_pretext(config, backbone, feature_dim(backbone))


def test_every_listed_method_builds_its_class() -> None:
    assert PRETEXT_TASKS == ("simclr", "byol", "vicreg", "barlow_twins", "mocov3")
    for method in PRETEXT_TASKS:
        assert type(_task(method)) is CLASSES[method]


@pytest.mark.parametrize("method", PRETEXT_TASKS)
def test_loss_is_finite_with_gradients_on_every_trainable_parameter(method: str) -> None:
    task = _task(method).train()
    x = torch.randn(6, 1, 8, 8)
    loss = task(x, x + 0.1 * torch.randn_like(x))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in task.named_parameters():
        if name.startswith("target."):
            assert p.grad is None and not p.requires_grad, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_module_layout_of_the_new_methods() -> None:
    for method in ("vicreg", "barlow_twins"):
        task = _task(method)
        assert isinstance(task.head, nn.Sequential)
        assert not hasattr(task, "target")
        assert [type(m) for m in task.head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    moco = _task("mocov3", head_hidden_bias=True)
    assert isinstance(moco, MoCoV3) and isinstance(moco.head, nn.ModuleDict)
    projector, predictor = moco.head["projector"], moco.head["predictor"]
    assert [type(m) for m in projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert projector[3].bias is None and not projector[4].affine  # the output BatchNorm cancels a bias
    assert projector[0].bias is not None
    assert [type(m) for m in predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    online = {f"backbone.{k}" for k in moco.backbone.state_dict()} | {
        f"projector.{k}" for k in projector.state_dict()
    }
    assert set(moco.target.state_dict()) == online
    byol = _task("byol")
    assert {k.split(".")[1] for k in byol.state_dict() if k.startswith("target.")} == {
        "backbone",
        "projector",
    }
    assert {k.split(".")[1] for k in moco.state_dict() if k.startswith("target.")} == {
        "backbone",
        "projector",
    }
