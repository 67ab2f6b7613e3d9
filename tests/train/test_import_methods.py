"""``bissl import`` of solo-learn and lightly checkpoints of the five pretext methods with MLP heads.

Each file is built here with its library's key layout (no download): solo-learn's heads as ``solo/methods/*.py``
builds them (hand-built ``nn.Sequential``), saved as a Lightning checkpoint with ``state_dict`` and
``hyper_parameters``; lightly's heads from its own head classes, under the attribute names of its examples.
Backbone, projector, predictor and momentum networks all hold different random values, so that the import is
checked tensor for tensor against its source: every tensor of the imported task equals one of the file bit for
bit. Then the method checks (the method a file
states or its keys tell, refused when it is not ``pretext.method``), the one-line messages of heads that do not
fit ``pretext.*``, and the BiSSL stage from an imported MoCo v3 checkpoint: no projector warm-up, and the
imported target network is the one the first alternation starts from.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from lightly.models.modules.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    MoCoProjectionHead,
    ProjectionHead,
    SimCLRProjectionHead,
    VICRegProjectionHead,
)
from torch import Tensor, nn

from bissl import cli
from bissl.bilevel.trainer import BilevelTrainer
from bissl.checkpoint import load_checkpoint
from bissl.config import Config, ImportConfig, PretextConfig, load_config
from bissl.errors import CheckpointError
from bissl.runtime import GracefulStop, RunDir
from bissl.train.bilevel_stage import train_bilevel
from bissl.train.import_checkpoint import METHODS, import_pretext

RESNET18 = ["model.backbone=resnet18", "model.stem=imagenet", "device=cpu"]
WIDTHS = ["pretext.projector_hidden=[16]", "pretext.projector_dim=8", "pretext.predictor_hidden=[16]"]
MOMENTUM = ("byol", "mocov3")
# the methods with MLP heads; DINO's head (and ViTs) are imported in tests/train/test_import_vit.py
MLP_METHODS = tuple(method for method in METHODS if method != "dino")
# pretext.* settings that make bissl's head the library's, key for key (then no bias is folded)
SOLO_LEARN_HEADS = {
    "simclr": ["pretext.head_hidden_bn=false", "pretext.head_hidden_bias=true"],
    "byol": ["pretext.head_hidden_bias=true"],
    "vicreg": ["pretext.head_hidden_bias=true", "pretext.projector_hidden=[16,16]"],
    "barlow_twins": ["pretext.head_hidden_bias=true", "pretext.projector_hidden=[16,16]"],
    "mocov3": ["pretext.head_output_bias=false"],
}
LIGHTLY_HEADS = {
    "simclr": ["pretext.head_hidden_bn=false", "pretext.head_hidden_bias=true"],
    "byol": [],
    "vicreg": ["pretext.projector_hidden=[16,16]"],
    "barlow_twins": ["pretext.projector_hidden=[16,16]"],
    "mocov3": ["pretext.head_output_bias=false"],
}
# torchvision names of the children of nn.Sequential(*resnet.children()[:-1]), lightly's example backbone
CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BatchNorm statistic drawn from ``seed``, none at its default value (weights at
    the scale of their fan-in, so that a forward pass stays finite)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            if not tensor.is_floating_point():
                tensor.fill_(int(torch.randint(1, 100, (), generator=generator)))
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif tensor.ndim >= 2:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
            elif name.endswith("weight"):
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(0.1 * noise)
    return module


def _resnet(seed: int, *, sequential: bool) -> nn.Module:
    resnet = torchvision.models.resnet18()
    resnet.fc = nn.Identity()
    body = nn.Sequential(*list(resnet.children())[:-1], nn.Flatten()) if sequential else resnet
    return _randomise(body, seed)


# ---------------------------------------------------------------------------------------------------------
# solo-learn: the heads of solo/methods/{simclr,byol,vicreg,barlow_twins,mocov3}.py at widths 16 and 8


def _solo_learn_heads(method: str) -> dict[str, nn.Module]:
    def block(a: int, b: int, *, bias: bool = True) -> list[nn.Module]:
        return [nn.Linear(a, b, bias=bias), nn.BatchNorm1d(b), nn.ReLU()]

    if method == "simclr":
        return {"projector": nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 8))}
    if method in ("vicreg", "barlow_twins"):
        return {"projector": nn.Sequential(*block(512, 16), *block(16, 16), nn.Linear(16, 8))}
    if method == "byol":
        return {
            "projector": nn.Sequential(*block(512, 16), nn.Linear(16, 8)),
            "predictor": nn.Sequential(*block(8, 16), nn.Linear(16, 8)),
            "momentum_projector": nn.Sequential(*block(512, 16), nn.Linear(16, 8)),
        }

    # MoCoV3._build_mlp for ResNets: Linear layers without bias, the projector's output BatchNorm without affine
    def projector() -> nn.Module:
        return nn.Sequential(
            *block(512, 16, bias=False), nn.Linear(16, 8, bias=False), nn.BatchNorm1d(8, affine=False)
        )

    return {
        "projector": projector(),
        "predictor": nn.Sequential(*block(8, 16, bias=False), nn.Linear(16, 8, bias=False)),
        "momentum_projector": projector(),
    }


def _solo_learn_model(method: str) -> nn.Module:
    """A solo-learn method module: ``backbone`` (torchvision ResNet, fc = Identity), ``classifier``, the heads,
    and for BYOL and MoCo v3 the ``momentum_backbone``."""
    model = nn.Module()
    model.backbone = _resnet(1, sequential=False)
    model.classifier = nn.Linear(512, 10)
    for seed, (name, head) in enumerate(_solo_learn_heads(method).items(), start=10):
        setattr(model, name, _randomise(head, seed))
    if method in MOMENTUM:
        model.momentum_backbone = _resnet(2, sequential=False)
    return model


def _save_solo_learn(model: nn.Module, method: str, path: Path, hyper: dict[str, Any] | None = None) -> Path:
    hyper = {"cfg": {"method": method, "backbone": {"name": "resnet18"}}} if hyper is None else hyper
    checkpoint = {
        "epoch": 399,
        "global_step": 1000,
        "pytorch-lightning_version": "2.0.0",
        "state_dict": model.state_dict(),
        "hyper_parameters": hyper,
    }
    torch.save(checkpoint, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# lightly: its head classes (ProjectionHead layout: Linear, then BatchNorm and ReLU as the block says)


def _lightly_heads(method: str) -> dict[str, nn.Module]:
    if method == "simclr":
        return {"projection_head": SimCLRProjectionHead(512, 16, 8, batch_norm=False)}
    if method == "vicreg":
        return {"projection_head": VICRegProjectionHead(512, 16, 8, num_layers=3)}
    if method == "barlow_twins":
        return {"projection_head": BarlowTwinsProjectionHead(512, 16, 8)}
    if method == "byol":
        return {
            "projection_head": BYOLProjectionHead(512, 16, 8),
            "prediction_head": BYOLPredictionHead(8, 16, 8),
            "projection_head_momentum": BYOLProjectionHead(512, 16, 8),
        }

    # lightly has no MoCo v3 head class: its ProjectionHead with the paper's blocks (output BN without affine)
    def projector() -> nn.Module:
        return ProjectionHead(
            [(512, 16, nn.BatchNorm1d(16), nn.ReLU()), (16, 8, nn.BatchNorm1d(8, affine=False), None)]
        )

    return {
        "projection_head": projector(),
        "prediction_head": ProjectionHead(
            [(8, 16, nn.BatchNorm1d(16), nn.ReLU()), (16, 8, None, None, False)]
        ),
        "projection_head_momentum": projector(),
    }


def _lightly_model(method: str, heads: dict[str, nn.Module] | None = None) -> nn.Module:
    """A lightly LightningModule as its examples write it: ``backbone`` = ``nn.Sequential`` of a torchvision
    ResNet's children, the heads, and for BYOL and MoCo v3 ``backbone_momentum``."""
    model = nn.Module()
    model.backbone = _resnet(1, sequential=True)
    for seed, (name, head) in enumerate((heads or _lightly_heads(method)).items(), start=10):
        setattr(model, name, _randomise(head, seed))
    if "projection_head_momentum" in dict(model.named_children()):
        model.backbone_momentum = _resnet(2, sequential=True)
    return model


def _save_lightly(model: nn.Module, path: Path) -> Path:
    torch.save({"epoch": 99, "global_step": 500, "state_dict": model.state_dict()}, path)
    return path


# ---------------------------------------------------------------------------------------------------------


def _config(layout: str, path: Path, *extra: str) -> Config:
    return load_config(
        None, [*RESNET18, *WIDTHS, f"imported.layout={layout}", f"imported.checkpoint={path}", *extra]
    )


def _expected(library: str, model: nn.Module, single_head: bool) -> dict[str, Tensor]:
    """The file's tensors under the imported task's names (the library's layout, restated here)."""
    head = "head." if single_head else "head.projector."
    if library == "solo-learn":
        renames = {
            "backbone.": "backbone.",
            "projector.": head,
            "predictor.": "head.predictor.",
            "momentum_backbone.": "target.backbone.",
            "momentum_projector.": "target.projector.",
        }
    else:
        renames = {
            "backbone.": "backbone.",
            "projection_head.layers.": head,
            "prediction_head.layers.": "head.predictor.",
            "backbone_momentum.": "target.backbone.",
            "projection_head_momentum.layers.": "target.projector.",
        }
    expected = {}
    for key, tensor in model.state_dict().items():
        for theirs, ours in renames.items():
            if key.startswith(theirs):
                rest = key.removeprefix(theirs)
                if library == "lightly" and "backbone" in theirs:
                    index, _, tail = rest.partition(".")
                    rest = f"{CHILDREN[index]}.{tail}"
                expected[ours + rest] = tensor
    return expected


def _loss_runs(task: nn.Module) -> None:
    views = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(task.train()(views[0], views[1]))


def test_imported_method_choices_are_the_pretext_methods() -> None:
    def literals(hint: Any) -> set[Any]:
        return {value for arg in typing.get_args(hint) for value in (literals(arg) or {arg})}

    for schema in (ImportConfig, PretextConfig):
        assert literals(typing.get_type_hints(schema)["method"]) - {type(None)} == set(METHODS)


@pytest.mark.parametrize("library", ["solo-learn", "lightly"])
@pytest.mark.parametrize("method", MLP_METHODS)
def test_every_method_imports_backbone_head_and_target_bit_for_bit(
    tmp_path: Path, library: str, method: str
) -> None:
    if library == "solo-learn":
        model = _solo_learn_model(method)
        path = _save_solo_learn(model, method, tmp_path / f"{method}.ckpt")
        settings = SOLO_LEARN_HEADS[method]
    else:
        model = _lightly_model(method)
        path = _save_lightly(model, tmp_path / f"{method}.ckpt")
        settings = LIGHTLY_HEADS[method]
    task, info = import_pretext(_config(library, path, f"pretext.method={method}", *settings))
    single_head = not isinstance(task.head, nn.ModuleDict)
    expected = _expected(library, model, single_head)
    own = task.state_dict()
    assert own.keys() == expected.keys()
    unequal = [key for key, tensor in expected.items() if not torch.equal(own[key], tensor)]
    assert unequal == []
    assert info["projector"] == "imported"
    assert info["target"] == ("imported" if method in MOMENTUM else None)
    if method in MOMENTUM:  # the target is the file's momentum encoder, not a copy of the online one
        assert not torch.equal(own["target.backbone.conv1.weight"], own["backbone.conv1.weight"])
    if library == "solo-learn":
        assert info["method"] == method
        assert info["method_evidence"] == f"solo-learn method '{method}'"
    elif method in MOMENTUM:
        assert info["method"] == method
        assert info["method_evidence"].startswith("lightly keys: a predictor and momentum networks")
    else:  # a projector alone: SimCLR, VICReg and Barlow Twins look the same, and the notes say so
        assert info["method"] is None
        assert info["method_evidence"].startswith("assumed from pretext.method")
        assert any("does not tell which of SimCLR, VICReg or Barlow Twins" in n for n in info["notes"])
    _loss_runs(task)


def test_lightly_benchmark_names_of_the_momentum_networks(tmp_path: Path) -> None:
    """lightly's ImageNet benchmarks keep a named ResNet and call the momentum copies ``teacher_*``."""
    heads = _lightly_heads("byol")
    model = nn.Module()
    model.backbone = _resnet(1, sequential=False)
    model.projection_head = _randomise(heads["projection_head"], 10)
    model.prediction_head = _randomise(heads["prediction_head"], 11)
    model.teacher_backbone = _resnet(2, sequential=False)
    model.teacher_projection_head = _randomise(heads["projection_head_momentum"], 12)
    model.online_classifier = nn.Module()
    model.online_classifier.classification_head = nn.Linear(512, 10)
    path = _save_lightly(model, tmp_path / "byol.ckpt")
    task, info = import_pretext(_config("lightly", path, "pretext.method=byol"))
    target: Any = task.target
    teacher = model.teacher_projection_head.state_dict()
    assert all(
        torch.equal(target.projector.state_dict()[k.removeprefix("layers.")], v) for k, v in teacher.items()
    )
    assert torch.equal(
        target.backbone.state_dict()["layer4.1.bn2.running_var"],
        model.teacher_backbone.layer4[1].bn2.running_var,
    )
    assert info["target"] == "imported"
    assert any("online classifier (online_classifier.*, 2 tensors)" in note for note in info["notes"])


def test_default_head_biases_fold_into_the_same_function(tmp_path: Path) -> None:
    """Without head_hidden_bias, solo-learn's hidden biases fold into BatchNorm's running mean: the imported
    projector and target projector compute the file's functions."""
    model = _solo_learn_model("byol")
    path = _save_solo_learn(model, "byol", tmp_path / "byol.ckpt")
    task, info = import_pretext(_config("solo-learn", path, "pretext.method=byol"))
    head: Any = task.head
    target: Any = task.target
    inputs = torch.randn(6, 512)
    for ours, theirs in ((head["projector"], model.projector), (target.projector, model.momentum_projector)):
        for train in (False, True):
            ours.train(train)
            theirs.train(train)
            with torch.no_grad():
                torch.testing.assert_close(ours(inputs), theirs(inputs), rtol=1e-5, atol=1e-5)
    assert info["target"] == "imported"


# ---------------------------------------------------------------------------------------------------------
# The checkpoint's method against pretext.method


def test_solo_learn_checkpoint_of_another_method_is_refused_in_one_line(tmp_path: Path) -> None:
    path = _save_solo_learn(_solo_learn_model("vicreg"), "vicreg", tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError) as caught:
        import_pretext(_config("solo-learn", path, *SOLO_LEARN_HEADS["vicreg"]))
    message = str(caught.value)
    assert "\n" not in message
    assert (
        f"checkpoint '{path}' holds a VICReg model (solo-learn method 'vicreg') but pretext.method is 'simclr'; "
        "pass pretext.method=vicreg"
    ) in message


def test_solo_learn_method_from_flat_hyper_parameters_or_args_json(tmp_path: Path) -> None:
    model = _solo_learn_model("barlow_twins")
    flat = _save_solo_learn(model, "", tmp_path / "flat.ckpt", hyper={"method": "barlow_twins", "lr": 0.3})
    with pytest.raises(CheckpointError, match=r"Barlow Twins model \(solo-learn method 'barlow_twins'\)"):
        import_pretext(_config("solo-learn", flat, "pretext.method=vicreg"))
    folder = tmp_path / "run"
    folder.mkdir()
    bare = _save_solo_learn(model, "", folder / "bare.ckpt", hyper={})
    (folder / "args.json").write_text(json.dumps({"method": "barlow_twins", "name": "bt"}))
    settings = ["pretext.method=barlow_twins", *SOLO_LEARN_HEADS["barlow_twins"]]
    _, info = import_pretext(_config("solo-learn", bare, *settings))
    assert info["method_evidence"] == "solo-learn method 'barlow_twins' in args.json"


def test_lightly_momentum_checkpoints_are_told_apart_by_the_projectors_last_layer(tmp_path: Path) -> None:
    byol = _save_lightly(_lightly_model("byol"), tmp_path / "byol.ckpt")
    mocov3 = _save_lightly(_lightly_model("mocov3"), tmp_path / "mocov3.ckpt")
    with pytest.raises(
        CheckpointError,
        match=r"holds a BYOL model \(lightly keys: .*ending in a Linear layer\) but pretext.method is 'mocov3'; pass pretext.method=byol",
    ):
        import_pretext(_config("lightly", byol, "pretext.method=mocov3"))
    with pytest.raises(
        CheckpointError,
        match=r"holds a MoCo v3 model \(lightly keys: .*ending in BatchNorm\) but pretext.method is 'byol'; pass pretext.method=mocov3",
    ):
        import_pretext(_config("lightly", mocov3, "pretext.method=byol"))


def test_lightly_projector_alone_is_refused_for_a_momentum_method_and_imported_method_states_it(
    tmp_path: Path,
) -> None:
    path = _save_lightly(_lightly_model("vicreg"), tmp_path / "vicreg.ckpt")
    with pytest.raises(CheckpointError) as caught:
        import_pretext(_config("lightly", path, "pretext.method=byol"))
    assert "holds a SimCLR, VICReg or Barlow Twins model" in str(caught.value)
    assert "pass pretext.method and imported.method as one of simclr, vicreg, barlow_twins" in str(
        caught.value
    )
    settings = LIGHTLY_HEADS["vicreg"]
    with pytest.raises(
        CheckpointError, match=r"VICReg model \(imported.method\) but pretext.method is 'barlow_twins'"
    ):
        import_pretext(
            _config("lightly", path, "imported.method=vicreg", "pretext.method=barlow_twins", *settings)
        )
    with pytest.raises(
        CheckpointError,
        match=r"imported.method is 'byol' but checkpoint .* fits a SimCLR, VICReg or Barlow Twins model",
    ):
        import_pretext(_config("lightly", path, "imported.method=byol", "pretext.method=byol"))
    _, info = import_pretext(
        _config("lightly", path, "imported.method=vicreg", "pretext.method=vicreg", *settings)
    )
    assert info["method"] == "vicreg" and info["method_evidence"] == "imported.method"
    assert not any("does not tell" in note for note in info["notes"])


def test_imported_method_that_contradicts_the_hyper_parameters_is_refused(tmp_path: Path) -> None:
    path = _save_solo_learn(_solo_learn_model("vicreg"), "vicreg", tmp_path / "x.ckpt")
    with pytest.raises(
        CheckpointError, match=r"solo-learn method 'vicreg'\) but imported.method is 'barlow_twins'"
    ):
        import_pretext(
            _config("solo-learn", path, "imported.method=barlow_twins", "pretext.method=barlow_twins")
        )


def test_unsupported_method_or_head_takes_the_backbone_alone_on_request(tmp_path: Path) -> None:
    model = _solo_learn_model("byol")
    swav = _save_solo_learn(model, "swav", tmp_path / "swav.ckpt")
    with pytest.raises(CheckpointError, match="solo-learn method 'swav', a method bissl does not train"):
        import_pretext(_config("solo-learn", swav, "pretext.method=byol"))
    task, info = import_pretext(
        _config("solo-learn", swav, "pretext.method=byol", "imported.projector=false")
    )
    assert info["projector"] == "absent" and info["target"] == "online copy"
    target: Any = task.target
    assert torch.equal(target.backbone.conv1.weight, task.backbone.conv1.weight)  # copied from the online one
    moco_v2 = nn.Module()  # lightly's MoCo example: momentum copies, no predictor
    moco_v2.backbone = _resnet(1, sequential=True)
    moco_v2.projection_head = BYOLProjectionHead(512, 16, 8)
    moco_v2.backbone_momentum = _resnet(2, sequential=True)
    moco_v2.projection_head_momentum = BYOLProjectionHead(512, 16, 8)
    path = _save_lightly(moco_v2, tmp_path / "moco.ckpt")
    with pytest.raises(
        CheckpointError, match=r"momentum networks without a predictor .* none of bissl's methods"
    ):
        import_pretext(_config("lightly", path))


def test_other_method_with_projector_false_imports_the_backbone_into_pretext_method(tmp_path: Path) -> None:
    model = _solo_learn_model("mocov3")
    path = _save_solo_learn(model, "mocov3", tmp_path / "m.ckpt")
    task, info = import_pretext(_config("solo-learn", path, "imported.projector=false"))
    assert torch.equal(
        task.backbone.state_dict()["layer2.0.conv1.weight"], model.backbone.layer2[0].conv1.weight
    )
    assert info["projector"] == "absent" and info["target"] is None
    assert any(
        "MoCo v3 model (solo-learn method 'mocov3'); its backbone alone goes into pretext.method=simclr" in n
        for n in info["notes"]
    )
    assert any(
        "dropped the momentum networks (momentum_backbone.*, momentum_projector.*)" in n
        for n in info["notes"]
    )


# ---------------------------------------------------------------------------------------------------------
# Heads that do not fit pretext.*: one line, the first differing key, the setting to change


def _refusal(path: Path, layout: str, *settings: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        import_pretext(_config(layout, path, *settings))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_head_that_does_not_fit_names_the_key_and_the_setting(tmp_path: Path) -> None:
    simclr = _save_solo_learn(_solo_learn_model("simclr"), "simclr", tmp_path / "simclr.ckpt")
    message = _refusal(simclr, "solo-learn")
    assert "projector.2.weight: checkpoint [8, 16] (Linear(16, 8)), model [16] (BatchNorm1d(16))" in message
    assert "set pretext.head_hidden_bn=false, or pass imported.projector=false" in message
    message = _refusal(simclr, "solo-learn", "pretext.head_hidden_bn=false")
    assert (
        "hidden layer has a bias (projector.0.bias)" in message
        and "set pretext.head_hidden_bias=true" in message
    )
    message = _refusal(simclr, "solo-learn", *SOLO_LEARN_HEADS["simclr"], "pretext.projector_hidden=[32]")
    assert (
        "projector.0.weight: checkpoint [16, 512] (Linear(512, 16)), model [32, 512] (Linear(512, 32)); "
        "set pretext.projector_hidden=[16]" in message
    )
    byol = _save_solo_learn(_solo_learn_model("byol"), "byol", tmp_path / "byol.ckpt")
    message = _refusal(byol, "solo-learn", "pretext.method=byol", "pretext.predictor_hidden=[16,16]")
    assert (
        "predictor.3.weight: checkpoint [8, 16] (Linear(16, 8)), model [16, 16] (Linear(16, 16)); "
        "set pretext.predictor_hidden=[16]" in message
    )


def _same_head(task_head: nn.Module, lightly_head: nn.Module) -> None:
    """lightly's ``layers.N`` tensors equal the bissl head's ``N`` tensors bit for bit."""
    mine = task_head.state_dict()
    for key, value in lightly_head.state_dict().items():
        assert torch.equal(mine[key.removeprefix("layers.")], value), key


def test_lightly_output_batchnorm_needs_head_output_bn_and_then_imports(tmp_path: Path) -> None:
    """lightly's default SimCLRProjectionHead (batch_norm=True) ends in an affine BatchNorm: refused with the
    setting that builds it, then imported bit for bit with pretext.head_output_bn=true."""
    model = _lightly_model("simclr", {"projection_head": SimCLRProjectionHead(512, 16, 8)})
    path = _save_lightly(model, tmp_path / "simclr.ckpt")
    message = _refusal(path, "lightly")
    assert "(512-16-8 with BatchNorm, ending in BatchNorm)" in message
    assert (
        "projection_head.layers.4.weight: checkpoint [8] (BatchNorm1d(8)), which the configured projector lacks"
        in message
    )
    assert "pretext.head_output_bn=true" in message
    task, info = import_pretext(_config("lightly", path, "pretext.head_output_bn=true"))
    assert info["projector"] == "imported"
    _same_head(task.head, model.projection_head)


def test_lightly_moco_head_with_trained_affine_batchnorm(tmp_path: Path) -> None:
    """MoCoProjectionHead(batch_norm=True) loads into MoCo v3's affine-free output BatchNorm only while its
    affine parameters are the identity; trained ones need pretext.head_output_bn=true, and then load."""
    heads = _lightly_heads("mocov3")
    heads["projection_head"] = MoCoProjectionHead(512, 16, 8, batch_norm=True)
    heads["projection_head_momentum"] = MoCoProjectionHead(512, 16, 8, batch_norm=True)
    model = _lightly_model("mocov3", heads)
    path = _save_lightly(model, tmp_path / "moco.ckpt")
    settings = ("pretext.method=mocov3", "pretext.head_output_bias=false")
    message = _refusal(path, "lightly", *settings)
    assert (
        "projection_head.layers.4.weight and .bias: the checkpoint's BatchNorm has trained affine parameters"
        in message
    )
    assert "pretext.head_output_bn=true" in message
    task, info = import_pretext(_config("lightly", path, *settings, "pretext.head_output_bn=true"))
    assert info["projector"] == "imported" and info["target"] == "imported"
    head = typing.cast(nn.ModuleDict, task.head)
    _same_head(head["projector"], model.projection_head)
    with torch.no_grad():
        for name in ("projection_head", "projection_head_momentum"):
            norm = getattr(model, name).layers[4]
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    path = _save_lightly(model, tmp_path / "moco.ckpt")
    _, info = import_pretext(_config("lightly", path, *settings))
    assert info["projector"] == "imported" and info["target"] == "imported"


# ---------------------------------------------------------------------------------------------------------
# The BiSSL stage from an imported MoCo v3 checkpoint

STAND_IN = [
    *RESNET18,
    *WIDTHS,
    "pretext.method=mocov3",
    "pretext.head_output_bias=false",
    "data.pretext=synthetic-rgb",
    "data.downstream=synthetic-rgb",
    "data.image_size=32",
    "data.pretext_limit=32",
    "data.downstream_limit=32",
]
BILEVEL = [
    "warmup.epochs=1",
    "warmup.batch_size=16",
    "bilevel.alternations=1",
    "bilevel.lower_steps=1",
    "bilevel.upper_steps=1",
    "bilevel.solver_iterations=1",
    "bilevel.lower_batch_size=8",
    "bilevel.upper_batch_size=8",
    "bilevel.lower_warmup_steps=1",
    "pretrain.log_every=1",
]


def test_bilevel_from_an_imported_momentum_checkpoint_keeps_its_head_and_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _save_lightly(_lightly_model("mocov3"), tmp_path / "mocov3.ckpt")
    argv = ["--quiet", "import", "--layout", "lightly", "--method", "mocov3", "--checkpoint", str(source)]
    assert cli.main([*argv, "--out", str(tmp_path / "i"), *STAND_IN]) == 0
    imported = tmp_path / "i" / "checkpoints" / "pretext.pt"
    state = load_checkpoint(imported, expect_stage="pretrain")
    assert state["meta"]["projector"] == "imported" and state["meta"]["target"] == "imported"
    assert state["meta"]["imported"]["method_evidence"] == "imported.method"
    saved = {k: v for k, v in state["task"].items() if k.startswith(("target.", "head."))}
    assert any(k.startswith("target.backbone.") for k in saved)
    started: list[dict[str, Tensor]] = []
    alternate = BilevelTrainer.alternate

    def first_alternation(self: BilevelTrainer) -> dict[str, float]:
        """The lower model as the first alternation receives it."""
        if not started:
            started.append({k: v.detach().clone() for k, v in self.lower.state_dict().items()})
        return alternate(self)

    monkeypatch.setattr(BilevelTrainer, "alternate", first_alternation)
    config = load_config(None, [*STAND_IN, *BILEVEL, f"pretext_checkpoint={imported}"])
    train_bilevel(config, RunDir(tmp_path / "b", config), stop=GracefulStop(), resume=False)
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert not any(r["stage"] == "projector-warmup" for r in records)
    assert [r["stage"] for r in records if r["stage"] == "bilevel"] == ["bilevel"]
    start = started[0]
    unequal = [k for k, v in saved.items() if not torch.equal(start[k], v)]
    assert unequal == []  # head and target as imported (the online backbone got the warm-up's statistics)
    assert not torch.equal(start["target.backbone.conv1.weight"], start["backbone.conv1.weight"])


def test_a_dino_run_imports_a_backbone_alone(tmp_path: Path) -> None:
    """A release without a DINO head: pretext.method=dino takes its backbone and trains a fresh head; the teacher
    is a copy of the online network."""
    resnet = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    task, info = import_pretext(
        _config("torchvision", path, "pretext.method=dino", "pretext.dino_out_dim=16")
    )
    assert info["projector"] == "absent" and info["target"] == "online copy"
    own = task.state_dict()
    assert torch.equal(own["backbone.conv1.weight"], resnet.state_dict()["conv1.weight"])
    assert torch.equal(own["target.backbone.conv1.weight"], own["backbone.conv1.weight"])
    _loss_runs(task)
