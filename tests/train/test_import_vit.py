"""``bissl import`` of ViT checkpoints and DINO heads.

Every file is built here on a tiny ViT (patch 4, width 8, depth 2, 2 heads, 8 px; timm's own
``VisionTransformer``, whose key names the DINO release, solo-learn and lightly share) with the key layout of
its source, no download: the original DINO release (the backbone-only file and the training checkpoint with
``student`` and ``teacher``), timm (classifier, ``fc_norm``), solo-learn's DINO (a Lightning checkpoint) and
lightly's DINO (its example's and its ImageNet benchmark's attribute names, built from lightly's own classes).
Backbones, heads and teachers hold different random values, and the imported networks are checked tensor for
tensor and by their outputs against the source modules. Then the one-line refusals: another ViT size, patch
size or depth (naming the ``model.*`` setting), a position embedding for another image size (resampled, or
refused naming ``data.image_size``), a ResNet for a ViT and the reverse, DINO heads that do not fit
``pretext.*``; and the BiSSL stage from an imported DINO training checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTIMM
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from bissl import cli
from bissl.bilevel.trainer import BilevelTrainer
from bissl.checkpoint import load_checkpoint
from bissl.config import Config, load_config
from bissl.errors import CheckpointError, ConfigError
from bissl.models import build_backbone
from bissl.runtime import GracefulStop, RunDir
from bissl.train.bilevel_stage import train_bilevel
from bissl.train.checkpoint_formats import load_pretext
from bissl.train.import_checkpoint import import_pretext

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

TINY = [
    "model.backbone=vit",
    "model.vit_patch_size=4",
    "model.vit_width=8",
    "model.vit_heads=2",
    "model.vit_depth=2",
    "data.image_size=8",
    "device=cpu",
]
# bissl's DINO head as the test heads are built: 8 -> 16 -> 16 -> 4 (bottleneck) -> 10 prototypes
DINO = [
    "pretext.method=dino",
    "pretext.projector_hidden=[16,16]",
    "pretext.projector_dim=4",
    "pretext.dino_out_dim=10",
]


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and buffer drawn afresh (LayerNorm weights too), so that any wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator) + 0.1)
    return module.eval()


def _vit(seed: int, *, size: int | tuple[int, int] = 8, depth: int = 2, **kwargs: Any) -> VisionTransformer:
    """A tiny ViT with timm's (and DINO's) key names."""
    kwargs.setdefault("num_classes", 0)
    net = VisionTransformer(img_size=size, patch_size=4, embed_dim=8, depth=depth, num_heads=2, **kwargs)
    _randomise(net, seed)
    return net


class AuthorsHead(nn.Module):
    """A DINO head with the DINO authors' (and solo-learn's) key layout: ``mlp`` (Linear, [BatchNorm,] GELU per
    hidden layer, then the bottleneck Linear) and a ``torch.nn.utils.weight_norm`` last layer."""

    def __init__(
        self, seed: int, *, use_bn: bool = False, out_dim: int = 10, trained_scale: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in ((8, 16), (16, 16)):
            layers += [nn.Linear(a, b), *([nn.BatchNorm1d(b)] if use_bn else []), nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(16, 4))
        self.last_layer = nn.utils.weight_norm(nn.Linear(4, out_dim, bias=False))
        _randomise(self, seed)
        with torch.no_grad():
            scale: Any = self.last_layer.weight_g
            scale.copy_(torch.rand(scale.shape, generator=torch.Generator().manual_seed(seed)) + 0.5)
            if not trained_scale:
                scale.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))  # type: ignore[no-any-return]


def _prefixed(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _config(layout: str, path: Path, *extra: str) -> Config:
    return load_config(None, [*TINY, f"imported.layout={layout}", f"imported.checkpoint={path}", *extra])


def _images(size: int = 8) -> Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))


def _same(ours: nn.Module, theirs: nn.Module, inputs: Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(inputs), theirs.eval()(inputs), rtol=1e-6, atol=1e-6)


def _equal_state(ours: nn.Module, theirs: dict[str, Tensor]) -> None:
    own = ours.state_dict()
    assert own.keys() == theirs.keys()
    assert [k for k, v in theirs.items() if not torch.equal(own[k], v)] == []


def _features(vit: VisionTransformer, images: Tensor) -> Tensor:
    """timm's own feature of ``vit``: the pooled, normalised token before any classifier."""
    with torch.no_grad():
        return vit.forward_head(vit.forward_features(images), pre_logits=True)


def _without_head(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


# ---------------------------------------------------------------------------------------------------------
# The original DINO release


def test_dino_backbone_only_release_gives_the_files_features(tmp_path: Path) -> None:
    source = _vit(1)
    torch.save(source.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")
    task, info = import_pretext(_config("dino", tmp_path / "dino_deitsmall16_pretrain.pth", *DINO))
    _equal_state(task.backbone, source.state_dict())
    torch.testing.assert_close(task.backbone.eval()(_images()), _features(source, _images()), rtol=0, atol=0)
    assert (info["projector"], info["target"], info["method"], info["pos_embed"]) == (
        "absent",
        "online copy",
        None,
        "as in the file",
    )
    _equal_state(task.target.backbone, source.state_dict())  # type: ignore[union-attr]


def _dino_checkpoint(path: Path, *, size: int = 8, args: Any = None, **head: Any) -> dict[str, nn.Module]:
    """DINO's ``checkpoint.pth`` as main_dino.py saves it: the student in DDP (``module.``), the teacher of a
    ViT without (no BatchNorm, so main_dino.py does not wrap it), the optimiser, the epoch, the loss centre."""
    networks = {
        "student": _vit(1, size=size),
        "student_head": AuthorsHead(3, **head),
        "teacher": _vit(2, size=size),
        "teacher_head": AuthorsHead(4, **head),
    }
    center = torch.randn(1, 10, generator=torch.Generator().manual_seed(5))
    saved: dict[str, Any] = {
        "student": {
            **_prefixed("module.backbone.", networks["student"].state_dict()),
            **_prefixed("module.head.", networks["student_head"].state_dict()),
        },
        "teacher": {
            **_prefixed("backbone.", networks["teacher"].state_dict()),
            **_prefixed("head.", networks["teacher_head"].state_dict()),
        },
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100,
        "dino_loss": {"center": center},
    }
    if args is not None:
        saved["args"] = args
    torch.save(saved, path)
    networks["center"] = nn.Module()
    networks["center"].register_buffer("center", center)
    return networks


def _check_student_and_teacher(task: Any, source: dict[str, nn.Module], images: Tensor) -> None:
    """Student as the online network, teacher as the target, both heads as their functions, the centre."""
    _equal_state(task.backbone, source["student"].state_dict())
    _equal_state(task.target.backbone, source["teacher"].state_dict())
    features = _features(source["student"], images)
    _same(task.head["projector"], source["student_head"], features)
    _same(task.target.projector, source["teacher_head"], features)
    torch.testing.assert_close(task.center, source["center"].center.reshape(1, 10), rtol=0, atol=0)


def test_dino_training_checkpoint_student_online_teacher_target(tmp_path: Path) -> None:
    source = _dino_checkpoint(tmp_path / "checkpoint.pth")
    task, info = import_pretext(_config("dino", tmp_path / "checkpoint.pth", *DINO))
    _check_student_and_teacher(task, source, _images())
    assert (info["projector"], info["target"], info["method"]) == ("imported", "imported", "dino")
    assert "DINO head" in info["method_evidence"]
    assert any("teacher.backbone.*, teacher.head.*" in note for note in info["notes"])
    assert any("loss centre" in note for note in info["notes"])
    # the head's weight-norm scales are a buffer of ones (dino_norm_last_layer) or trained parameters
    trained = _dino_checkpoint(tmp_path / "trained.pth", trained_scale=True)
    task, _ = import_pretext(
        _config("dino", tmp_path / "trained.pth", *DINO, "pretext.dino_norm_last_layer=false")
    )
    _check_student_and_teacher(task, trained, _images())


def test_dino_checkpoint_args_need_trust_and_another_method_takes_the_backbone_alone(tmp_path: Path) -> None:
    source = _dino_checkpoint(tmp_path / "full.pth", args=argparse.Namespace(arch="vit_small", out_dim=10))
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace.*imported\.trust_pickle=true"):
        import_pretext(_config("dino", tmp_path / "full.pth", *DINO))
    trusted = ["imported.trust_pickle=true"]
    with pytest.raises(
        CheckpointError,
        match=r"holds a DINO model .* but pretext\.method is 'simclr'; pass pretext\.method=dino",
    ):
        import_pretext(_config("dino", tmp_path / "full.pth", *trusted))
    task, info = import_pretext(_config("dino", tmp_path / "full.pth", *trusted, "imported.projector=false"))
    _equal_state(task.backbone, source["student"].state_dict())
    assert info["projector"] == "absent" and info["method"] == "dino"
    assert any("its backbone alone goes into pretext.method=simclr" in note for note in info["notes"])


def test_dino_lone_teacher_network_is_the_online_network(tmp_path: Path) -> None:
    teacher, head = _vit(2), AuthorsHead(4)
    state = {**_prefixed("backbone.", teacher.state_dict()), **_prefixed("head.", head.state_dict())}
    torch.save({"teacher": state, "epoch": 1}, tmp_path / "teacher.pth")
    task, info = import_pretext(_config("dino", tmp_path / "teacher.pth", *DINO))
    _equal_state(task.backbone, teacher.state_dict())
    _same(task.head["projector"], head, _features(teacher, _images()))
    assert (info["projector"], info["target"]) == ("imported", "online copy")
    assert any("teacher alone" in note for note in info["notes"])


# ---------------------------------------------------------------------------------------------------------
# timm, solo-learn, lightly


def test_timm_vit_drops_the_classifier_and_loads_fc_norm_as_norm(tmp_path: Path) -> None:
    classifier = _vit(1, num_classes=5)
    torch.save({"state_dict": classifier.state_dict(), "epoch": 3}, tmp_path / "timm.pth.tar")
    task, info = import_pretext(_config("timm", tmp_path / "timm.pth.tar"))
    _equal_state(task.backbone, _without_head(classifier.state_dict()))
    assert any("classifier (head.*, 2 tensors)" in note for note in info["notes"])
    # timm's fc_norm (norm applied after pooling): the same CLS feature
    pooled = _vit(2, global_pool="token", fc_norm=True)
    assert "norm.weight" not in pooled.state_dict() and "fc_norm.weight" in pooled.state_dict()
    torch.save(pooled.state_dict(), tmp_path / "fc_norm.pth")
    task, info = import_pretext(_config("timm", tmp_path / "fc_norm.pth"))
    torch.testing.assert_close(task.backbone.eval()(_images()), _features(pooled, _images()), rtol=0, atol=0)
    assert any("fc_norm.* (the LayerNorm after pooling) as norm.*" in note for note in info["notes"])


def test_solo_learn_dino_imports_backbone_head_teacher_and_centre(tmp_path: Path) -> None:
    """solo/methods/dino.py: ``backbone``, ``head`` (DINOHead: mlp, last_layer), ``momentum_backbone``,
    ``momentum_head``, the online ``classifier``, and ``dino_loss_func`` with its ``center`` buffer."""
    model = nn.Module()
    model.backbone, model.head = _vit(1), AuthorsHead(3)
    model.momentum_backbone, model.momentum_head = _vit(2), AuthorsHead(4)
    model.classifier = nn.Linear(8, 10)
    loss = nn.Module()
    loss.register_buffer("center", torch.randn(1, 10))
    model.dino_loss_func = loss
    hyper = {"cfg": {"method": "dino", "backbone": {"name": "vit_small"}}}
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": hyper, "epoch": 9}, tmp_path / "dino.ckpt"
    )
    task, info = import_pretext(_config("solo-learn", tmp_path / "dino.ckpt", *DINO))
    source = {
        "student": model.backbone,
        "student_head": model.head,
        "teacher": model.momentum_backbone,
        "teacher_head": model.momentum_head,
        "center": loss,
    }
    _check_student_and_teacher(task, source, _images())
    assert (info["method"], info["method_evidence"]) == ("dino", "solo-learn method 'dino'")
    assert (info["projector"], info["target"]) == ("imported", "imported")
    assert any("online linear classifier (classifier.*, 2 tensors)" in note for note in info["notes"])


def _masked(seed: int) -> MaskedVisionTransformerTIMM:
    """lightly's benchmark backbone: a timm ViT (with its ImageNet classifier) wrapped as ``vit`` beside a
    ``mask_token``."""
    return _randomise(MaskedVisionTransformerTIMM(vit=_vit(seed, num_classes=3)), seed)  # type: ignore[return-value]


@pytest.mark.parametrize("names", ["example", "benchmark"])
def test_lightly_dino_student_online_teacher_target(tmp_path: Path, names: str) -> None:
    """examples/pytorch_lightning/dino.py: ``student_backbone`` (DINO's ViT), ``student_head``,
    ``teacher_backbone``, ``teacher_head``; benchmarks/imagenet/vitb16/dino.py: the teacher is ``backbone`` +
    ``projection_head`` (prototype scales trained), the student ``student_backbone`` + ``student_projection_head``,
    both ViTs in ``MaskedVisionTransformerTIMM``, beside an ``online_classifier``."""
    model = nn.Module()
    model.criterion = _randomise(DINOLoss(output_dim=10), 6)
    trained = names == "benchmark"

    def head(seed: int) -> nn.Module:
        module = _randomise(DINOProjectionHead(8, 16, 4, 10, norm_last_layer=not trained), seed)
        if not trained:  # a fixed scale stays at 1
            nn.init.ones_(module.last_layer.weight_g)
        return module

    if names == "example":
        model.student_backbone, model.student_head = _vit(1), head(3)
        model.teacher_backbone, model.teacher_head = _vit(2), head(4)
        student, teacher = model.student_backbone, model.teacher_backbone
        student_head, teacher_head = model.student_head, model.teacher_head
    else:
        model.backbone, model.projection_head = _masked(2), head(4)
        model.student_backbone, model.student_projection_head = _masked(1), head(3)
        model.online_classifier = nn.Linear(8, 10)
        student, teacher = model.student_backbone.vit, model.backbone.vit
        student_head, teacher_head = model.student_projection_head, model.projection_head
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "dino.ckpt")
    extra = ["pretext.dino_norm_last_layer=false"] if trained else []
    task, info = import_pretext(_config("lightly", tmp_path / "dino.ckpt", *DINO, *extra))
    source = {
        "student": _vit(0, num_classes=0),
        "student_head": student_head,
        "teacher": _vit(0, num_classes=0),
        "teacher_head": teacher_head,
        "center": model.criterion,
    }
    source["student"].load_state_dict(_without_head(student.state_dict()))
    source["teacher"].load_state_dict(_without_head(teacher.state_dict()))
    _check_student_and_teacher(task, source, _images())
    assert (info["method"], info["projector"], info["target"]) == ("dino", "imported", "imported")
    if names == "benchmark":
        assert any("mask token" in note for note in info["notes"])
        assert any("classifier (student_backbone.vit.head.*, 2 tensors)" in note for note in info["notes"])
        assert any("online classifier (online_classifier.*" in note for note in info["notes"])


# ---------------------------------------------------------------------------------------------------------
# Refusals in one line


def test_vit_s16_file_into_vit_tiny_names_the_first_key_and_the_setting(tmp_path: Path) -> None:
    with torch.device("meta"):
        vit_small = build_backbone("vit_small", image_size=224, vit_patch_size=16)
    state = {k: torch.zeros(v.shape, dtype=torch.bfloat16) for k, v in vit_small.state_dict().items()}
    torch.save(state, tmp_path / "dino_deitsmall16_pretrain.pth")
    config = load_config(
        None,
        [
            "model.backbone=vit_tiny",
            "data.image_size=32",
            "device=cpu",
            "imported.layout=dino",
            f"imported.checkpoint={tmp_path / 'dino_deitsmall16_pretrain.pth'}",
        ],
    )
    with pytest.raises(CheckpointError) as refusal:
        import_pretext(config)
    message = str(refusal.value)
    assert "\n" not in message
    assert message.startswith(
        f"checkpoint '{tmp_path / 'dino_deitsmall16_pretrain.pth'}' (layout dino) holds"
    )
    assert "a ViT-S/16 (width 384, depth 12, 16-pixel patches, MLP ratio 4)" in message
    assert "model.backbone=vit_tiny (width 192, depth 12, 16-pixel patches, MLP ratio 4)" in message
    assert "cls_token: checkpoint [1, 1, 384], model [1, 1, 192]" in message
    assert message.endswith("; set model.backbone=vit_small")


def test_patch_size_depth_and_mlp_ratio_mismatches_name_their_settings(tmp_path: Path) -> None:
    torch.save(_vit(1).state_dict(), tmp_path / "p4.pth")
    with pytest.raises(
        CheckpointError,
        match=r"pos_embed: checkpoint \[1, 5, 8\], model \[1, 17, 8\].*; set model\.vit_patch_size=4$",
    ):
        import_pretext(_config("timm", tmp_path / "p4.pth", "model.vit_patch_size=2"))
    torch.save(_vit(1, depth=3).state_dict(), tmp_path / "deep.pth")
    with pytest.raises(
        CheckpointError,
        match=r"blocks\.2\.norm1\.weight: not in the model .*set model\.backbone=vit model\.vit_width=8 model\.vit_depth=3",
    ):
        import_pretext(_config("timm", tmp_path / "deep.pth"))
    torch.save(_vit(1, mlp_ratio=2.0).state_dict(), tmp_path / "mlp.pth")
    with pytest.raises(CheckpointError, match=r"set model\.vit_mlp_ratio=2$"):
        import_pretext(_config("timm", tmp_path / "mlp.pth"))


def test_position_embedding_for_another_image_size_is_resampled_or_refused(tmp_path: Path) -> None:
    source = _dino_checkpoint(tmp_path / "at16.pth", size=16)  # a 4x4 patch grid; the config's 8 px is 2x2
    task, info = import_pretext(_config("dino", tmp_path / "at16.pth", *DINO))
    for ours, theirs in ((task.backbone, source["student"]), (task.target.backbone, source["teacher"])):  # type: ignore[union-attr]
        expected = resample_abs_pos_embed(
            theirs.pos_embed.detach(), [2, 2], old_size=[4, 4], num_prefix_tokens=1
        )
        torch.testing.assert_close(ours.pos_embed, expected, rtol=0, atol=0)
        assert torch.equal(ours.pos_embed[:, 0], theirs.pos_embed[:, 0])  # the CLS entry as it is
    assert info["pos_embed"] == "resampled"
    resampled = [n for n in info["notes"] if n.startswith("resampled pos_embed from 4x4 to 2x2 patches")]
    assert len(resampled) == 1 and "data.image_size=8; the file was made at 16 px" in resampled[0]
    with pytest.raises(CheckpointError) as refusal:
        import_pretext(_config("dino", tmp_path / "at16.pth", *DINO, "imported.resample_pos_embed=false"))
    assert str(refusal.value) == (
        f"checkpoint '{tmp_path / 'at16.pth'}' (layout dino): pos_embed: checkpoint [1, 17, 8] (4x4 patches, "
        "16 px), model [1, 5, 8] (2x2 patches: data.image_size=8); set data.image_size=16, or "
        "imported.resample_pos_embed=true to resample it to the configured grid"
    )
    torch.save(_vit(1, size=(8, 12)).state_dict(), tmp_path / "oblong.pth")
    with pytest.raises(
        CheckpointError, match=r"\[1, 7, 8\] \(7 tokens\).*not a CLS token plus a square patch grid"
    ):
        import_pretext(_config("timm", tmp_path / "oblong.pth"))


def test_resnet_file_for_a_vit_and_vit_file_for_a_resnet_are_refused(tmp_path: Path) -> None:
    torch.save(_vit(1).state_dict(), tmp_path / "vit.pth")
    resnet = ["model.backbone=resnet18", "model.stem=small"]
    with pytest.raises(
        CheckpointError,
        match=r"holds a ViT \(cls_token, pos_embed, .*\) but model.backbone=resnet18; set model.backbone=vit",
    ):
        import_pretext(_config("timm", tmp_path / "vit.pth", *resnet))
    torch.save(build_backbone("resnet18", stem="small").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(
        CheckpointError, match=r"holds a ResNet \(conv1.weight, .*\) but model.backbone=vit is a ViT"
    ):
        import_pretext(_config("timm", tmp_path / "resnet.pth"))
    with pytest.raises(ConfigError, match=r"imported\.layout=torchvision holds ResNets; a ViT"):
        import_pretext(_config("torchvision", tmp_path / "vit.pth"))
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(
        CheckpointError, match=r"neither a ViT or ResNet state dict nor DINO's student .*encoder\.weight"
    ):
        import_pretext(_config("dino", tmp_path / "other.pth"))


@pytest.mark.parametrize(
    ("head", "settings", "expected"),
    [
        (
            {"use_bn": True},
            [],
            r"mlp\.1\.weight: DINO's use_bn_in_head\), which bissl's DINO head does not have",
        ),
        (
            {"out_dim": 12},
            [],
            r"student\.module\.head\.last_layer\.weight_v: checkpoint \[12, 4\], model \[10, 4\]; set pretext\.dino_out_dim=12",
        ),
        (
            {"trained_scale": True},
            [],
            r"student\.module\.head\.last_layer\.weight_g: .* set pretext\.dino_norm_last_layer=false",
        ),
        ({}, ["pretext.projector_dim=6"], r"set pretext\.projector_dim=4"),
    ],
)
def test_dino_head_that_does_not_fit_names_the_key_and_the_setting(
    tmp_path: Path, head: dict[str, Any], settings: list[str], expected: str
) -> None:
    _dino_checkpoint(tmp_path / "full.pth", **head)
    with pytest.raises(CheckpointError, match=expected) as refusal:
        import_pretext(_config("dino", tmp_path / "full.pth", *DINO, *settings))
    assert "\n" not in str(refusal.value) and "imported.projector=false" in str(refusal.value)


# ---------------------------------------------------------------------------------------------------------
# The command and the BiSSL stage from an imported DINO training checkpoint

STAND_IN = [
    *TINY,
    *DINO,
    "data.pretext=synthetic-rgb",
    "data.downstream=synthetic-rgb",
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


def test_bilevel_from_an_imported_dino_checkpoint_keeps_its_head_teacher_and_centre(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dino_checkpoint(tmp_path / "checkpoint.pth", size=16)
    argv = ["--quiet", "import", "--layout", "dino", "--checkpoint", str(tmp_path / "checkpoint.pth")]
    assert cli.main([*argv, "--out", str(tmp_path / "i"), *STAND_IN]) == 0
    imported = tmp_path / "i" / "checkpoints" / "pretext.pt"
    state = load_checkpoint(imported, expect_stage="pretrain")
    meta = state["meta"]
    assert (meta["method"], meta["projector"], meta["target"]) == ("dino", "imported", "imported")
    assert meta["architecture"]["image_size"] == 8 and meta["imported"]["pos_embed"] == "resampled"
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert any(note.startswith("resampled pos_embed") for note in summary["notes"])
    load_pretext(imported, load_config(None, STAND_IN), 3)
    saved = {k: v for k, v in state["task"].items() if k.startswith(("target.", "head.", "center"))}
    started: list[dict[str, Tensor]] = []
    alternate = BilevelTrainer.alternate

    def first_alternation(self: BilevelTrainer) -> dict[str, float]:
        if not started:
            started.append({k: v.detach().clone() for k, v in self.lower.state_dict().items()})
        return alternate(self)

    monkeypatch.setattr(BilevelTrainer, "alternate", first_alternation)
    config = load_config(None, [*STAND_IN, *BILEVEL, f"pretext_checkpoint={imported}"])
    summary = train_bilevel(config, RunDir(tmp_path / "b", config), stop=GracefulStop(), resume=False)
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert not any(r["stage"] == "projector-warmup" for r in records)
    assert summary["alternations"] == 1
    assert [k for k, v in saved.items() if not torch.equal(started[0][k], v)] == []
    assert not torch.equal(started[0]["target.backbone.cls_token"], started[0]["backbone.cls_token"])
