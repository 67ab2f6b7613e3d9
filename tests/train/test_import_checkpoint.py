"""``bissl import``: every layout built in the test (synthetic weights, real ResNet-18 key names and shapes), the
checked key mapping and its one-line errors, projector import (exactly the same function), and the BiSSL stage
with the projector warm-up from an imported torchvision backbone, resumed after a stop bit-identically."""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import typing
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn

from bissl import cli
from bissl.checkpoint import load_checkpoint
from bissl.config import Config, ImportConfig, load_config
from bissl.errors import CheckpointError, ConfigError
from bissl.optim import warmup_cosine
from bissl.runtime import GracefulStop, RunDir, StopRequested
from bissl.train import projector_warmup
from bissl.train.bilevel_stage import train_bilevel
from bissl.train.checkpoint_formats import load_pretext
from bissl.train.data_sources import load_pretext_source, make_two_view
from bissl.train.import_checkpoint import LAYOUTS, import_pretext, map_mlp
from bissl.train.projector_warmup import WARMUP_FILE, warm_projector
from tests.tiny import flat_tensors

RESNET18 = ["model.backbone=resnet18", "model.stem=imagenet", "device=cpu"]
HEAD = ["pretext.projector_hidden=[16]", "pretext.projector_dim=8", "pretext.predictor_hidden=[16]"]


def _torchvision_resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a wrong mapping shows in the outputs
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _mlp(dims: list[int], *, hidden_bias: bool, out_bias: bool) -> nn.Sequential:
    """An MLP as other codebases build it: Linear (bias or not) - BN - ReLU per hidden layer, then Linear."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims[:-1]):
        layers += [nn.Linear(a, b, bias=hidden_bias), nn.BatchNorm1d(b), nn.ReLU()]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=out_bias))
    mlp = nn.Sequential(*layers)
    with torch.no_grad():
        for module in mlp.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.uniform_(-0.5, 0.5)
    return mlp


def _prefixed(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _without_fc(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _config(tmp_path: Path, layout: str, checkpoint: Path, *extra: str) -> Config:
    return load_config(
        None, [*RESNET18, *HEAD, f"imported.layout={layout}", f"imported.checkpoint={checkpoint}", *extra]
    )


def _same_function(ours: nn.Module, theirs: nn.Module, inputs: Tensor) -> None:
    """Equal outputs in eval mode (running statistics) and in train mode (batch statistics)."""
    for train in (False, True):
        ours.train(train)
        theirs.train(train)
        with torch.no_grad():
            torch.testing.assert_close(ours(inputs), theirs(inputs), rtol=1e-5, atol=1e-5)


def _backbone_output(model: nn.Module) -> Tensor:
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


def test_layout_names_match_the_config_choices() -> None:
    hint = typing.get_type_hints(ImportConfig)["layout"]
    assert typing.get_args(typing.get_args(hint)[0]) == LAYOUTS


def test_torchvision_layout_loads_every_backbone_tensor_and_drops_the_classifier(tmp_path: Path) -> None:
    source = _torchvision_resnet18()
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    task, info = import_pretext(_config(tmp_path, "torchvision", tmp_path / "tv.pth"))
    own = task.backbone.state_dict()
    assert own.keys() == _without_fc(source.state_dict()).keys()
    assert all(torch.equal(own[k], v) for k, v in _without_fc(source.state_dict()).items())
    source.fc = nn.Identity()
    task.backbone.eval()
    torch.testing.assert_close(_backbone_output(task.backbone), _backbone_output(source))
    assert info["projector"] == "absent" and info["channels"] == 3
    assert any("classifier (fc.*, 2 tensors)" in note for note in info["notes"])


def test_timm_layout_gives_the_timm_network_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False).eval()
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    task, info = import_pretext(_config(tmp_path, "timm", tmp_path / "timm.pth"))
    source.reset_classifier(0)
    task.backbone.eval()
    torch.testing.assert_close(_backbone_output(task.backbone), _backbone_output(source))
    assert info["projector"] == "absent"


def test_timm_training_checkpoint_with_ddp_prefix_is_unwrapped(tmp_path: Path) -> None:
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save({"epoch": 3, "state_dict": _prefixed("module.", state)}, tmp_path / "train.pth.tar")
    task, _ = import_pretext(_config(tmp_path, "timm", tmp_path / "train.pth.tar"))
    assert torch.equal(task.backbone.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def _solo_learn_checkpoint(byol: bool) -> tuple[dict[str, Any], nn.Module, nn.Module, nn.Module]:
    """A Lightning checkpoint with solo-learn's keys: backbone (torchvision ResNet, fc removed), projector
    Linear(bias)-BN-ReLU-Linear(bias) (solo-learn's BYOL projector; every method's own layout is in
    test_import_methods.py), online classifier, and for BYOL predictor + momentum networks. The hyper-parameters
    name no method: the keys tell it."""
    backbone = _torchvision_resnet18()
    backbone.fc = nn.Identity()
    projector = _mlp([512, 16, 8], hidden_bias=True, out_bias=True)
    predictor = _mlp([8, 16, 8], hidden_bias=True, out_bias=True)
    state = {
        **_prefixed("backbone.", backbone.state_dict()),
        **_prefixed("projector.", projector.state_dict()),
        "classifier.weight": torch.zeros(10, 512),
        "classifier.bias": torch.zeros(10),
    }
    if byol:
        state |= _prefixed("predictor.", predictor.state_dict())
        state |= _prefixed("momentum_backbone.", backbone.state_dict())
        state |= _prefixed("momentum_projector.", projector.state_dict())
    checkpoint = {"epoch": 99, "global_step": 1000, "state_dict": state, "hyper_parameters": {"lr": 0.3}}
    return checkpoint, backbone, projector, predictor


def test_solo_learn_simclr_imports_backbone_and_projector(tmp_path: Path) -> None:
    checkpoint, backbone, projector, _ = _solo_learn_checkpoint(byol=False)
    torch.save(checkpoint, tmp_path / "solo.ckpt")
    task, info = import_pretext(_config(tmp_path, "solo-learn", tmp_path / "solo.ckpt"))
    task.backbone.eval()
    torch.testing.assert_close(_backbone_output(task.backbone), _backbone_output(backbone))
    _same_function(task.head, projector, torch.randn(6, 512))
    assert info["projector"] == "imported"
    assert any("online linear classifier" in note for note in info["notes"])


def test_solo_learn_byol_imports_projector_predictor_and_momentum_networks(tmp_path: Path) -> None:
    checkpoint, _, projector, predictor = _solo_learn_checkpoint(byol=True)
    torch.save(checkpoint, tmp_path / "byol.ckpt")
    task, info = import_pretext(
        _config(tmp_path, "solo-learn", tmp_path / "byol.ckpt", "pretext.method=byol")
    )
    head: Any = task.head
    target: Any = task.target
    target_state = target.projector.state_dict().values()
    assert all(
        torch.equal(a, b) for a, b in zip(target_state, head["projector"].state_dict().values(), strict=True)
    )
    _same_function(head["projector"], projector, torch.randn(6, 512))
    _same_function(head["predictor"], predictor, torch.randn(6, 8))
    assert info["projector"] == "imported" and info["target"] == "imported"
    assert info["method"] == "byol" and info["method_evidence"].startswith("solo-learn keys: a predictor")
    assert any("imported the momentum networks" in note for note in info["notes"])


def test_solo_learn_byol_into_simclr_is_refused_or_gives_its_backbone_alone(tmp_path: Path) -> None:
    checkpoint, *_ = _solo_learn_checkpoint(byol=True)
    torch.save(checkpoint, tmp_path / "byol.ckpt")
    with pytest.raises(CheckpointError, match=r"holds a BYOL model .* but pretext.method is 'simclr'"):
        import_pretext(_config(tmp_path, "solo-learn", tmp_path / "byol.ckpt"))
    _, info = import_pretext(
        _config(tmp_path, "solo-learn", tmp_path / "byol.ckpt", "imported.projector=false")
    )
    assert info["projector"] == "absent" and info["target"] is None
    assert any("dropped the predictor (predictor.*)" in note for note in info["notes"])


@pytest.mark.parametrize("sequential", [True, False])
def test_lightly_backbone_as_sequential_children_or_by_name(tmp_path: Path, sequential: bool) -> None:
    """lightly's examples keep ``nn.Sequential(*resnet.children()[:-1])`` (keys ``backbone.0.``, ``backbone.4.``);
    its benchmarks keep the ResNet with ``fc = Identity``. Its heads: Linear without bias before BatchNorm."""
    resnet = _torchvision_resnet18()
    body: nn.Module
    if sequential:
        body = nn.Sequential(*list(resnet.children())[:-1], nn.Flatten())
    else:
        resnet.fc = nn.Identity()
        body = resnet
    projection = _mlp([512, 16, 8], hidden_bias=False, out_bias=True)
    state = {
        **_prefixed("backbone.", body.state_dict()),
        **_prefixed("projection_head.layers.", projection.state_dict()),
        "online_classifier.classification_head.weight": torch.zeros(10, 512),
        "criterion.memory_bank.bank": torch.zeros(8, 4),
    }
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "lightly.ckpt")
    task, info = import_pretext(_config(tmp_path, "lightly", tmp_path / "lightly.ckpt"))
    task.backbone.eval()
    torch.testing.assert_close(_backbone_output(task.backbone), _backbone_output(body.eval()))
    _same_function(task.head, projection, torch.randn(6, 512))
    assert info["projector"] == "imported"
    assert "dropped online classifier (online_classifier.*, 1 tensors)" in info["notes"]
    assert "dropped entries this layout does not use (criterion)" in info["notes"]


def _reference_files(tmp_path: Path, byol: bool) -> tuple[Path, Path, nn.Module, nn.Module]:
    """The authors' pretext release: timm ResNet backbone (fc replaced by Flatten, so no fc keys) and a head
    file ``projector.*`` (+ ``predictor.*``): Linear(bias)-BN-ReLU blocks, output Linear without bias."""
    torch.manual_seed(0)
    backbone = timm.create_model("resnet18", pretrained=False)
    backbone.fc = nn.Flatten()
    projector = _mlp([512, 16, 16, 8], hidden_bias=True, out_bias=False)
    predictor = _mlp([8, 16, 16, 8], hidden_bias=True, out_bias=False)
    head = nn.Sequential(
        OrderedDict([("projector", projector)] + ([("predictor", predictor)] if byol else []))
    )
    torch.save(backbone.state_dict(), tmp_path / "Pretext_backbone.pth")
    torch.save(head.state_dict(), tmp_path / "Pretext_head.pth")
    return tmp_path / "Pretext_backbone.pth", tmp_path / "Pretext_head.pth", projector, predictor


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_bissl_reference_backbone_and_head_files(tmp_path: Path, method: str) -> None:
    backbone_file, head_file, projector, predictor = _reference_files(tmp_path, byol=method == "byol")
    config = _config(
        tmp_path,
        "bissl-reference",
        backbone_file,
        f"imported.head={head_file}",
        f"pretext.method={method}",
        "pretext.projector_hidden=[16,16]",
        "pretext.predictor_hidden=[16,16]",
    )
    task, info = import_pretext(config)
    head: Any = task.head
    ours = head["projector"] if method == "byol" else head
    _same_function(ours, projector, torch.randn(6, 512))
    if method == "byol":
        _same_function(head["predictor"], predictor, torch.randn(6, 8))
    assert info["projector"] == "imported"


def test_authors_head_shape_is_reproduced_by_the_bias_knobs(tmp_path: Path) -> None:
    """pretext.head_hidden_bias=true, head_output_bias=false build the authors' MLP: same keys and shapes, and
    their head file then loads tensor for tensor (no folding)."""
    backbone_file, head_file, projector, _ = _reference_files(tmp_path, byol=False)
    biases = [
        "pretext.head_hidden_bias=true",
        "pretext.head_output_bias=false",
        "pretext.projector_hidden=[16,16]",
    ]
    config = _config(tmp_path, "bissl-reference", backbone_file, f"imported.head={head_file}", *biases)
    task, info = import_pretext(config)
    theirs = projector.state_dict()
    ours = task.head.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert info["projector"] == "imported"


def test_bissl_reference_first_version_projector_file_and_whole_model_state(tmp_path: Path) -> None:
    backbone_file, _, projector, _ = _reference_files(tmp_path, byol=False)
    backbone_state = torch.load(backbone_file, weights_only=True)
    torch.save(
        projector.state_dict(), tmp_path / "pretext_proj.pth"
    )  # v1: the projector alone, keys 0.*, 1.*
    extra = ["pretext.projector_hidden=[16,16]", f"imported.head={tmp_path / 'pretext_proj.pth'}"]
    task, info = import_pretext(_config(tmp_path, "bissl-reference", backbone_file, *extra))
    _same_function(task.head, projector, torch.randn(6, 512))
    whole = {
        **_prefixed("backbone.", backbone_state),
        **_prefixed("head.projector.", projector.state_dict()),
        **_prefixed("projector_target.", projector.state_dict()),
    }
    torch.save(whole, tmp_path / "model.pth")
    task, info = import_pretext(
        _config(tmp_path, "bissl-reference", tmp_path / "model.pth", "pretext.projector_hidden=[16,16]")
    )
    _same_function(task.head, projector, torch.randn(6, 512))
    assert any("BYOL target network" in note for note in info["notes"])


def test_missing_unexpected_and_misshapen_keys_are_named_in_one_line(tmp_path: Path) -> None:
    state = _torchvision_resnet18().state_dict()
    for key in (
        "layer4.1.bn2.weight",
        "layer4.1.bn2.bias",
        "layer3.0.conv1.weight",
        "layer2.0.bn1.bias",
        "bn1.bias",
    ):
        state.pop(key)
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as caught:
        import_pretext(_config(tmp_path, "torchvision", tmp_path / "bad.pth"))
    message = str(caught.value)
    assert "\n" not in message
    assert "5 missing keys (" in message and "layer4.1.bn2.weight" in message and ", ...)" in message
    assert "1 unexpected keys (layer5.0.conv1.weight)" in message
    assert (
        "1 shape mismatches (layer1.0.conv1.weight: checkpoint [64, 64, 1, 1], model [64, 64, 3, 3])"
        in message
    )
    assert "check imported.layout" in message


def test_wrong_stem_or_architecture_is_a_shape_error(tmp_path: Path) -> None:
    torch.save(_torchvision_resnet18().state_dict(), tmp_path / "tv.pth")
    with pytest.raises(
        CheckpointError, match=r"conv1.weight: checkpoint \[64, 3, 7, 7\], model \[64, 3, 3, 3\]"
    ):
        import_pretext(_config(tmp_path, "torchvision", tmp_path / "tv.pth", "model.stem=small"))
    with pytest.raises(
        CheckpointError, match=r"165 missing keys.*23 shape mismatches.*model.backbone=resnet50"
    ):
        import_pretext(_config(tmp_path, "torchvision", tmp_path / "tv.pth", "model.backbone=resnet50"))


def test_wrong_layout_name_and_wrong_layout_for_the_file(tmp_path: Path) -> None:
    torch.save(_torchvision_resnet18().state_dict(), tmp_path / "tv.pth")
    with pytest.raises(ConfigError, match=r"imported\.layout"):
        _config(tmp_path, "moco", tmp_path / "tv.pth")
    for layout in ("solo-learn", "lightly"):
        with pytest.raises(CheckpointError, match=f"not a {layout} checkpoint; check imported.layout"):
            import_pretext(_config(tmp_path, layout, tmp_path / "tv.pth"))
    checkpoint, *_ = _solo_learn_checkpoint(byol=False)
    torch.save(checkpoint, tmp_path / "solo.ckpt")
    with pytest.raises(
        CheckpointError, match="unexpected keys"
    ):  # backbone.* and projector.* are not a ResNet's
        import_pretext(_config(tmp_path, "torchvision", tmp_path / "solo.ckpt"))
    with pytest.raises(ConfigError, match="ResNets"):
        import_pretext(_config(tmp_path, "torchvision", tmp_path / "tv.pth", "model.backbone=small_resnet"))


def test_projector_that_does_not_fit_the_config_says_which_widths(tmp_path: Path) -> None:
    checkpoint, *_ = _solo_learn_checkpoint(byol=False)
    torch.save(checkpoint, tmp_path / "solo.ckpt")
    with pytest.raises(
        CheckpointError, match=r"\(512-16-8 with BatchNorm\) does not fit the configured one \(512-32-8"
    ):
        import_pretext(
            _config(tmp_path, "solo-learn", tmp_path / "solo.ckpt", "pretext.projector_hidden=[32]")
        )
    _, info = import_pretext(
        _config(
            tmp_path,
            "solo-learn",
            tmp_path / "solo.ckpt",
            "pretext.projector_hidden=[32]",
            "imported.projector=false",
        )
    )
    assert info["projector"] == "absent"


def test_output_bias_that_the_configured_head_lacks_is_refused() -> None:
    target = nn.Sequential(nn.Linear(4, 3, bias=False))
    source = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match="output layer has a bias"):
        map_mlp(source.state_dict(), target, "projector", "hint")
    with torch.no_grad():
        source[0].bias.zero_()
    target.load_state_dict(map_mlp(source.state_dict(), target, "projector", "hint"))


def test_pickled_objects_need_trust(tmp_path: Path) -> None:
    checkpoint, *_ = _solo_learn_checkpoint(byol=False)
    checkpoint["hyper_parameters"] = argparse.Namespace(lr=0.3)
    torch.save(checkpoint, tmp_path / "solo.ckpt")
    with pytest.raises(CheckpointError, match=r"imported\.trust_pickle=true"):
        import_pretext(_config(tmp_path, "solo-learn", tmp_path / "solo.ckpt"))
    _, info = import_pretext(
        _config(tmp_path, "solo-learn", tmp_path / "solo.ckpt", "imported.trust_pickle=true")
    )
    assert info["projector"] == "imported"
    with pytest.raises(CheckpointError, match="does not exist"):
        import_pretext(_config(tmp_path, "solo-learn", tmp_path / "absent.ckpt"))


# ---------------------------------------------------------------------------------------------------------
# The command, and the BiSSL stage from an imported torchvision backbone with the projector warm-up

STAND_IN = [
    *RESNET18,
    "data.pretext=synthetic-rgb",
    "data.downstream=synthetic-rgb",
    "data.image_size=32",
    "data.pretext_limit=64",
    "data.downstream_limit=64",
    "pretext.projector_hidden=[16]",
    "pretext.projector_dim=8",
]
BILEVEL = [
    "warmup.epochs=1",
    "warmup.batch_size=16",
    "bilevel.alternations=2",
    "bilevel.lower_steps=2",
    "bilevel.upper_steps=1",
    "bilevel.solver_iterations=1",
    "bilevel.lower_batch_size=8",
    "bilevel.upper_batch_size=8",
    "bilevel.lower_warmup_steps=1",
    "bilevel.checkpoint_every=1",
    "pretrain.log_every=1",
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("import")
    torch.save(_torchvision_resnet18().state_dict(), folder / "resnet18.pth")
    argv = ["--quiet", "import", "--layout", "torchvision", "--checkpoint", str(folder / "resnet18.pth")]
    assert cli.main([*argv, "--out", str(folder / "run"), *STAND_IN]) == 0
    return folder / "run" / "checkpoints" / "pretext.pt"


def test_import_command_writes_a_pretext_checkpoint_every_stage_reads(imported: Path) -> None:
    state = load_checkpoint(imported, expect_stage="pretrain")
    meta = state["meta"]
    assert meta["projector"] == "absent" and meta["imported"]["layout"] == "torchvision"
    assert meta["architecture"] == {"backbone": "resnet18", "in_channels": 3, "stem": "imagenet"}
    task = load_pretext(imported, load_config(None, STAND_IN), 3)
    source = _torchvision_resnet18().state_dict()
    assert torch.equal(task.backbone.state_dict()["layer3.1.conv2.weight"], source["layer3.1.conv2.weight"])
    summary = json.loads((imported.parents[1] / "summary.json").read_text())
    assert summary["projector"] == "absent" and summary["stage"] == "import"


def test_bilevel_on_an_absent_projector_without_warmup_says_to_set_it(
    imported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quiet", "bilevel", "--out", str(tmp_path / "b"), *STAND_IN, *BILEVEL]
    assert cli.main([*argv, f"pretext_checkpoint={imported}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "set pretext.projector_warmup_steps=N" in error
    assert "imported from a torchvision checkpoint" in error


def _bilevel(imported: Path, out: Path, stop: GracefulStop | None = None) -> dict[str, Any]:
    config = load_config(
        None, [*STAND_IN, *BILEVEL, f"pretext_checkpoint={imported}", "pretext.projector_warmup_steps=12"]
    )
    run = RunDir(out, config, resume=True)
    return train_bilevel(config, run, stop=stop or GracefulStop(), resume=True)


def test_bissl_runs_from_an_imported_backbone_after_the_projector_warmup(
    imported: Path, tmp_path: Path
) -> None:
    summary = _bilevel(imported, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in records if r["stage"] == "projector-warmup"]
    assert [r["step"] for r in warm] == list(range(1, 13))
    assert [r["stage"] for r in records[12:]] == ["bilevel", "bilevel"]
    assert summary["alternations"] == 2
    state = load_checkpoint(
        tmp_path / "run" / "checkpoints" / WARMUP_FILE, expect_stage="projector-warmup-state"
    )
    start = load_checkpoint(imported)["task"]
    trained = state["head"]
    assert not torch.equal(trained["head.0.weight"], start["head.0.weight"])  # the head moved
    assert not any(k.startswith("backbone.") for k in trained)


def test_projector_warmup_leaves_the_backbone_untouched(imported: Path, tmp_path: Path) -> None:
    config = load_config(
        None, [*STAND_IN, *BILEVEL, f"pretext_checkpoint={imported}", "pretext.projector_warmup_steps=3"]
    )
    task = load_pretext(imported, config, 3)
    before = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    data = load_pretext_source(config)
    run = RunDir(tmp_path / "w", config)
    warm_projector(
        task,
        config,
        data,
        make_two_view(config, data),
        run,
        stop=GracefulStop(),
        device=torch.device("cpu"),
        resume=False,
    )
    after = task.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in task.backbone.parameters())


def test_projector_warmup_stopped_then_rerun_is_bit_identical(
    imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop request (what SIGTERM's handler sets) at warm-up step 5 writes the warm-up checkpoint and leaves;
    the rerun ends with exactly the state of an uninterrupted run."""
    _bilevel(imported, tmp_path / "straight")
    stop = GracefulStop()
    steps = 0

    def schedule_then_stop(*args: Any) -> float:
        """The warm-up's learning-rate schedule, asked once per warm-up step; a stop arrives in step 5."""
        nonlocal steps
        steps += 1
        if steps == 5:
            stop.signum = signal.SIGTERM
        return warmup_cosine(*args)

    monkeypatch.setattr(projector_warmup, "warmup_cosine", schedule_then_stop)
    with pytest.raises(StopRequested):
        _bilevel(imported, tmp_path / "resumed", stop)
    monkeypatch.undo()
    stopped = load_checkpoint(tmp_path / "resumed" / "checkpoints" / WARMUP_FILE)
    assert stopped["step"] == 5 and not (tmp_path / "resumed" / "checkpoints" / "last.pt").exists()
    _bilevel(imported, tmp_path / "resumed")
    for name in ("checkpoints/last.pt", f"checkpoints/{WARMUP_FILE}", "lower_backbone.pt"):
        left, right = flat_tensors(tmp_path / "straight" / name), flat_tensors(tmp_path / "resumed" / name)
        assert left.keys() == right.keys()
        for key in left:
            assert torch.equal(left[key], right[key]), (name, key)
