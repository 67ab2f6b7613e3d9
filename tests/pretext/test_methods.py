"""Every pretext method built by name: its module layout (which checkpoint import relies on), a finite loss with
gradients on every trainable parameter, and the momentum target of BYOL, MoCo v3 and DINO."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bissl.config import PretextConfig
from bissl.models import build_backbone, feature_dim
from bissl.models.heads import DINOHead, WeightNormLinear
from bissl.pretext import BYOL, DINO, PRETEXT_TASKS, BarlowTwins, MoCoV3, SimCLR, VICReg, build_pretext

CLASSES = {
    "simclr": SimCLR,
    "byol": BYOL,
    "vicreg": VICReg,
    "barlow_twins": BarlowTwins,
    "mocov3": MoCoV3,
    "dino": DINO,
}


def _task(method: str, **overrides: object) -> nn.Module:
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", in_channels=1, width=4, blocks=(1,))
    config = PretextConfig(
        method=method,  # type: ignore[arg-type]
        projector_hidden=[8],
        projector_dim=6,
        predictor_hidden=[8],
        dino_out_dim=7,
        **overrides,  # type: ignore[arg-type]
    )
    return build_pretext(config, backbone, feature_dim(backbone))


def test_every_listed_method_builds_its_class() -> None:
    assert PRETEXT_TASKS == ("simclr", "byol", "vicreg", "barlow_twins", "mocov3", "dino")
    for method in PRETEXT_TASKS:
        assert type(_task(method)) is CLASSES[method]


@pytest.mark.parametrize(
    ("method", "overrides"), [(m, {}) for m in PRETEXT_TASKS] + [("dino", {"dino_norm_last_layer": False})]
)
def test_loss_is_finite_with_gradients_on_every_trainable_parameter(
    method: str, overrides: dict[str, object]
) -> None:
    task = _task(method, **overrides).train()
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


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_module_layout_of_dino(norm_last_layer: bool) -> None:
    """The keys that checkpoint import maps onto: the DINO authors' head keys under ``head.projector.`` (student)
    and ``target.projector.`` (teacher); the centre and the teacher temperature are buffers of the task."""
    task = _task("dino", dino_norm_last_layer=norm_last_layer)
    assert isinstance(task, DINO) and isinstance(task.head, nn.ModuleDict)
    head = task.head["projector"]
    assert isinstance(head, DINOHead) and isinstance(head.last_layer, WeightNormLinear)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert all(m.bias is not None for m in head.mlp if isinstance(m, nn.Linear))
    head_keys = {
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "last_layer.weight_g",
        "last_layer.weight_v",
    }
    assert set(head.state_dict()) == head_keys
    assert head.last_layer.weight_v.shape == (7, 6) and head.last_layer.weight_g.shape == (7, 1)
    trained = {name for name, _ in head.named_parameters()}
    assert ("last_layer.weight_g" in trained) is not norm_last_layer
    assert {k for k in task.state_dict() if not k.startswith(("backbone.", "target.backbone."))} == (
        {f"head.projector.{k}" for k in head_keys}
        | {f"target.projector.{k}" for k in head_keys}
        | {"center", "teacher_temperature"}
    )
    assert task.center.shape == (1, 7)
    online = {f"backbone.{k}" for k in task.backbone.state_dict()} | {
        f"projector.{k}" for k in head.state_dict()
    }
    assert set(task.target.state_dict()) == online
    if norm_last_layer:  # every prototype (row of the last layer's weight) has unit norm
        norms = head.last_layer.normalised_weight().norm(dim=1)
        assert torch.allclose(norms, torch.ones(7), atol=1e-6)
