"""``bissl import``: public SSL checkpoints (torchvision, timm, solo-learn, lightly, the original DINO release,
the BiSSL authors' files) turned into a pretext checkpoint that every stage accepts.

Each layout names where the backbone, the projector, the predictor and the momentum (target) networks live in
the file. Keys are mapped by those rules only, then checked against the configured model: missing keys,
unexpected keys and shape mismatches end the import with one line that names them, and a head whose structure
differs from ``pretext.*`` names its first differing key and the setting to change. solo-learn and lightly
checkpoints of SimCLR, BYOL, VICReg, Barlow Twins and MoCo v3 keep their projector, the predictor of BYOL and
MoCo v3, and the momentum backbone and projector of BYOL and MoCo v3 as the task's target network; the BiSSL
stage then continues from that head and target (no projector warm-up, no re-copy of the target). The method a
checkpoint was trained with is read from solo-learn's hyper-parameters (or its ``args.json``) or told from the
keys, and a checkpoint of another method than ``pretext.method`` is refused. Classifier heads are dropped on
purpose and listed in the summary. A release without a projector that fits ``pretext.*`` is recorded as
``projector: absent``; the BiSSL stage then trains the pretext head first (``pretext.projector_warmup_steps``)
and copies the target from the online network.

ViT backbones (``model.backbone: vit*``) are read from the DINO release, timm, solo-learn and lightly files,
whose ViTs all carry timm's key names; ``bissl.train.import_vit`` checks their shape against the configured
ViT and resamples a position embedding made for another image size. DINO heads (an MLP, then a
weight-normalised last layer) are told from their keys.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bissl.checkpoint import require_file
from bissl.config import Config
from bissl.errors import CheckpointError, ConfigError
from bissl.models import VIT_BACKBONES
from bissl.pretext import PRETEXT_TASKS, PretextTask
from bissl.runtime import RunDir, say, seed_everything
from bissl.train.checkpoint_formats import save_backbone, save_pretext
from bissl.train.import_vit import (
    check_vit_shape,
    fc_norm_as_norm,
    fit_position_embedding,
    is_vit_state,
    vit_shape_of,
)
from bissl.train.model_factory import make_pretext

LAYOUTS = ("torchvision", "timm", "solo-learn", "lightly", "dino", "bissl-reference")
RESNETS = ("resnet18", "resnet34", "resnet50")
VIT_LAYOUTS = ("timm", "solo-learn", "lightly", "dino")
METHODS = PRETEXT_TASKS
METHOD_NAMES = {
    "simclr": "SimCLR",
    "byol": "BYOL",
    "vicreg": "VICReg",
    "barlow_twins": "Barlow Twins",
    "mocov3": "MoCo v3",
    "dino": "DINO",
}
# lightly's examples keep a torchvision ResNet as nn.Sequential(*children()[:-1]): child index -> name.
SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# lightly names the momentum copies after its examples, its ImageNet benchmarks or its MoCo benchmark.
LIGHTLY_MOMENTUM = (
    ("backbone_momentum.", "projection_head_momentum."),
    ("teacher_backbone.", "teacher_projection_head."),
    ("key_backbone.", "key_projection_head."),
)
# lightly's DINO: the student's head, and the teacher (examples: teacher_*; ImageNet benchmarks: backbone, projection_head).
LIGHTLY_STUDENT_HEADS = ("student_head.", "student_projection_head.")
LIGHTLY_TEACHERS = (
    ("teacher_backbone.", ("teacher_head.", "teacher_projection_head.")),
    ("backbone.", ("projection_head.",)),
)
# The original DINO release (facebookresearch/dino): a training checkpoint keeps these two networks.
DINO_NETWORKS = ("student", "teacher")
_SHOWN = 4
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class SourceParts:
    """What a layout found in a file: the backbone, projector, predictor and momentum networks as state dicts
    (``prefixes``: the file's key prefix of each), what it dropped, and what tells the training method:
    ``method`` as the file states it (``stated_by`` says where), ``candidates``, the methods its keys fit
    (None when it holds no pretext head), and ``structure``, those keys in words."""

    backbone: dict[str, Tensor]
    projector: dict[str, Tensor] | None = None
    predictor: dict[str, Tensor] | None = None
    momentum_backbone: dict[str, Tensor] | None = None
    momentum_projector: dict[str, Tensor] | None = None
    prefixes: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    method: str | None = None
    stated_by: str = ""
    candidates: tuple[str, ...] | None = None
    structure: str = ""
    notes: list[str] = field(default_factory=list)
    center: Tensor | None = None
    """DINO's loss centre (the running mean of the teacher's outputs), where the file keeps it."""


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


def read_checkpoint(
    path: str | Path, *, trust_pickle: bool = False, key: str = "imported.checkpoint (--checkpoint)"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors of a checkpoint file and the entries beside them: a plain state dict, or the
    ``state_dict`` / ``model`` entry of a training checkpoint (Lightning, timm), whose other entries
    (``hyper_parameters``, ``epoch``, ...) come second; a DDP ``module.`` prefix is removed. A DINO training
    checkpoint's ``student`` and ``teacher`` state dicts (and its loss's ``dino_loss``) become one state dict
    with those prefixes. ``key`` names the setting that gave the path in the messages."""
    source = require_file(path, "checkpoint", f"check {key}")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and not trust_pickle:
            raise CheckpointError(
                f"checkpoint '{source}' holds Python objects besides tensors{_pickled_objects(exc)}, which are "
                "not loaded by default; if you trust the file, pass imported.trust_pickle=true, or save its "
                "state_dict alone"
            ) from None
        text = _plain(str(exc)).strip()
        reason = text.splitlines()[0][:120] if text else type(exc).__name__
        raise CheckpointError(
            f"checkpoint '{source}' cannot be read ({reason}); it is truncated or not a checkpoint"
        ) from None
    state: Any = loaded
    beside: dict[str, Any] = {}
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            beside = {str(k): v for k, v in state.items() if k != wrapper}
            state = state[wrapper]
            break
    if isinstance(state, dict) and any(isinstance(state.get(n), dict) for n in DINO_NETWORKS):
        nested = {n: state[n] for n in (*DINO_NETWORKS, "dino_loss") if isinstance(state.get(n), dict)}
        beside = {str(k): v for k, v in state.items() if k not in nested}
        state = {f"{n}.{k}": v for n, entries in nested.items() for k, v in entries.items()}
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint '{source}' holds no state dict (a mapping of names to tensors)")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint '{source}' holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors, beside


def read_state_dict(
    path: str | Path, *, trust_pickle: bool = False, key: str = "imported.checkpoint (--checkpoint)"
) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (``read_checkpoint`` without the entries beside them)."""
    return read_checkpoint(path, trust_pickle=trust_pickle, key=key)[0]


def _plain(text: str) -> str:
    """``text`` without terminal escape codes (torch colours parts of its messages)."""
    return ANSI_ESCAPE.sub("", text)


def _pickled_objects(error: Exception) -> str:
    """`` (a.B, c.D)``: the Python objects torch refused to unpickle, as its message names them, or ``""``."""
    names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", _plain(str(error)))))
    return f" ({', '.join(names[:_SHOWN])})" if names else ""


def _under(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _drop(state: dict[str, Tensor], parts: SourceParts, prefix: str, what: str) -> None:
    count = sum(1 for k in state if k.startswith(prefix))
    if count:
        parts.dropped.append(f"{what} ({prefix}*, {count} tensors)")


def _classifier(backbone: dict[str, Tensor]) -> str:
    """The key prefix of a backbone's classifier: a timm ViT's ``head.``, a ResNet's ``fc.``."""
    return "head." if is_vit_state(backbone) else "fc."


def _without_fc(backbone: dict[str, Tensor]) -> dict[str, Tensor]:
    """A backbone state dict without its classifier (``fc.*``, or ``head.*`` of a timm ViT)."""
    prefix = _classifier(backbone)
    return {k: v for k, v in backbone.items() if not k.startswith(prefix)}


def _drop_classifier(
    state: dict[str, Tensor], parts: SourceParts, prefix: str, what: str = "classifier"
) -> None:
    """Record the classifier of the backbone under ``prefix`` as dropped."""
    _drop(state, parts, prefix + _classifier(_under(state, prefix)), what)


def _report_unknown(state: dict[str, Tensor], parts: SourceParts, known: tuple[str, ...]) -> None:
    unknown = sorted({k.split(".")[0] for k in state if not k.startswith(known)})
    if unknown:
        parts.dropped.append(f"entries this layout does not use ({', '.join(unknown)})")


def _ends_in_batchnorm(head: dict[str, Tensor] | None) -> bool:
    """Whether the last layer of an index-keyed MLP state dict is a BatchNorm (MoCo v3's projector)."""
    if not head:
        return False
    indices = [k.split(".")[0] for k in head]
    if not all(index.isdigit() for index in indices):
        return False
    last = max(indices, key=int)
    return f"{last}.running_mean" in head


def _is_dino_head(head: dict[str, Tensor] | None) -> bool:
    """Whether a head state dict is DINO's: an MLP, then a weight-normalised ``last_layer`` (``weight_g`` and
    ``weight_v``, or the ``parametrizations.weight.original0/1`` of ``torch.nn.utils.parametrizations``)."""
    return bool(head) and any(k.startswith("last_layer.") for k in head or {})


def _tell_method(parts: SourceParts) -> None:
    """``parts.candidates`` and ``parts.structure`` from the parts a file holds: a head with a weight-normalised
    last layer is DINO's, predictor and momentum networks are BYOL or MoCo v3 (MoCo v3's projector ends in
    BatchNorm), a projector alone is SimCLR, VICReg or Barlow Twins, anything else is a method bissl does not
    train."""
    predictor = parts.predictor is not None
    momentum = parts.momentum_backbone is not None or parts.momentum_projector is not None
    if _is_dino_head(parts.projector) and not predictor:
        parts.candidates = ("dino",)
        parts.structure = "a DINO head (an MLP, then a weight-normalised last layer)" + (
            " and momentum networks" if momentum else ""
        )
    elif predictor and momentum:
        if _ends_in_batchnorm(parts.projector):
            parts.candidates = ("mocov3",)
            parts.structure = "a predictor and momentum networks, the projector ending in BatchNorm"
        else:
            parts.candidates = ("byol",)
            parts.structure = "a predictor and momentum networks, the projector ending in a Linear layer"
    elif momentum:
        parts.candidates = ()
        parts.structure = "momentum networks without a predictor (as MoCo v2 or DINO)"
    elif predictor:
        parts.candidates = ()
        parts.structure = "a predictor without momentum networks (as SimSiam)"
    elif parts.projector is not None:
        parts.candidates = ("simclr", "vicreg", "barlow_twins")
        parts.structure = "a projector without predictor or momentum networks"


def _plain_backbone(state: dict[str, Tensor]) -> SourceParts:
    """torchvision and timm ResNets, timm ViTs: every key is the backbone's but the classifier (``fc``, a ViT's
    ``head``)."""
    parts = SourceParts(backbone=_without_fc(state))
    _drop(state, parts, _classifier(state), "classifier")
    return parts


def _field(holder: Any, name: str) -> Any:
    """``holder[name]`` of a mapping (a dict, an OmegaConf DictConfig) or ``holder.name`` of a namespace."""
    if holder is None:
        return None
    if isinstance(holder, Mapping):
        return holder.get(name)
    return getattr(holder, name, None)


def _solo_learn_stated_method(beside: dict[str, Any], source: Path | None) -> tuple[str | None, str]:
    """The method a solo-learn checkpoint states: ``hyper_parameters`` (``method``, or ``cfg.method``), else the
    ``args.json`` solo-learn writes beside its checkpoints; ``(None, "")`` when neither says."""
    hyper = _field(beside, "hyper_parameters")
    for holder in (hyper, _field(hyper, "cfg")):
        method = _field(holder, "method")
        if isinstance(method, str):
            return method, f"solo-learn method '{method}'"
    args = source.parent / "args.json" if source is not None else None
    if args is not None and args.is_file():
        try:
            method = json.loads(args.read_text()).get("method")
        except (ValueError, AttributeError, OSError):
            method = None
        if isinstance(method, str):
            return method, f"solo-learn method '{method}' in {args.name}"
    return None, ""


def _solo_learn(state: dict[str, Tensor]) -> SourceParts:
    """solo-learn (``solo/methods``): ``backbone.``, ``projector.``, the ``predictor.`` of BYOL and MoCo v3,
    their ``momentum_backbone.`` and ``momentum_projector.``; DINO's ``head.`` and ``momentum_head.`` (its
    ``DINOHead``: ``mlp.*``, ``last_layer.weight_g/v``) and loss centre ``dino_loss_func.center``; the online
    linear ``classifier.`` (and ``momentum_classifier.``) is dropped."""
    if not any(k.startswith("backbone.") for k in state):
        raise CheckpointError(
            "no 'backbone.*' keys: this is not a solo-learn checkpoint; check imported.layout"
        )
    parts = SourceParts(
        backbone=_without_fc(_under(state, "backbone.")),
        projector=_under(state, "projector.") or None,
        predictor=_under(state, "predictor.") or None,
        momentum_backbone=_without_fc(_under(state, "momentum_backbone.")) or None,
        momentum_projector=_under(state, "momentum_projector.") or None,
        prefixes={
            "backbone": "backbone.",
            "projector": "projector.",
            "predictor": "predictor.",
            "momentum_backbone": "momentum_backbone.",
            "momentum_projector": "momentum_projector.",
        },
        center=state.get("dino_loss_func.center"),
    )
    if parts.projector is None and _is_dino_head(_under(state, "head.")):
        parts.projector = _under(state, "head.")
        parts.momentum_projector = _under(state, "momentum_head.") or None
        parts.prefixes |= {"projector": "head.", "momentum_projector": "momentum_head."}
    _drop_classifier(state, parts, "backbone.")
    _drop_classifier(state, parts, "momentum_backbone.", "classifier of the momentum backbone")
    _drop(state, parts, "classifier.", "online linear classifier")
    _drop(state, parts, "momentum_classifier.", "online linear classifier of the momentum backbone")
    known = (
        "backbone.",
        "projector.",
        "predictor.",
        "momentum_backbone.",
        "momentum_projector.",
        "classifier.",
        "momentum_classifier.",
        "dino_loss_func.",
        *(("head.", "momentum_head.") if parts.prefixes["projector"] == "head." else ()),
    )
    _report_unknown(state, parts, known)
    _tell_method(parts)
    return parts


def _lightly_backbone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A lightly backbone with torchvision names: ``nn.Sequential`` child indices renamed, ``fc`` removed."""
    backbone: dict[str, Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head.isdigit():
            key = f"{SEQUENTIAL_RESNET.get(head, f'children[{head}]')}.{rest}"
        backbone[key] = value
    return _without_fc(backbone)


def _lightly_inner(state: dict[str, Tensor], prefix: str) -> str:
    """Where the backbone under ``prefix`` keeps its own keys: ``prefix + "vit."`` for lightly's
    ``MaskedVisionTransformerTIMM`` (a timm ViT as ``vit``, beside a ``mask_token``), else ``prefix``."""
    return prefix + "vit." if any(k.startswith(prefix + "vit.") for k in state) else prefix


def _lightly_backbone_at(
    state: dict[str, Tensor], parts: SourceParts, prefix: str, what: str = "classifier"
) -> dict[str, Tensor] | None:
    """The lightly backbone under ``prefix`` (a ViT unwrapped from ``vit.``), its classifier and a
    ``mask_token`` recorded as dropped."""
    inner = _lightly_inner(state, prefix)
    if inner != prefix:
        _drop(state, parts, prefix + "mask_token", "the mask token of lightly's MaskedVisionTransformerTIMM")
    _drop_classifier(state, parts, inner, what)
    return _lightly_backbone(_under(state, inner)) or None


def _lightly_head(state: dict[str, Tensor], prefix: str) -> tuple[dict[str, Tensor] | None, str]:
    """A lightly head (``ProjectionHead.layers``, an ``nn.Sequential``) under ``prefix``, and its key prefix; a
    ``DINOProjectionHead`` (``layers.*`` and ``last_layer.*``) whole."""
    if any(k.startswith(prefix + "last_layer.") for k in state):
        return _under(state, prefix), prefix
    layers = _under(state, prefix + "layers.")
    if layers:
        return layers, prefix + "layers."
    return _under(state, prefix) or None, prefix


def _lightly(state: dict[str, Tensor]) -> SourceParts:
    """lightly: ``backbone.`` (torchvision names, or ``nn.Sequential`` child indices as in its examples),
    ``projection_head.layers.``, the ``prediction_head.layers.`` of BYOL and MoCo v3, and their momentum copies
    (``backbone_momentum.`` / ``projection_head_momentum.`` as in the examples, ``teacher_backbone.`` /
    ``teacher_projection_head.`` or ``key_backbone.`` / ``key_projection_head.`` as in the benchmarks); the
    online classifier is dropped."""
    if any(k.startswith("student_backbone.") for k in state):
        return _lightly_student_teacher(state)
    if not any(k.startswith("backbone.") for k in state):
        raise CheckpointError(
            "no 'backbone.*' or 'student_backbone.*' keys: this is not a lightly checkpoint; check imported.layout"
        )
    projector, projector_prefix = _lightly_head(state, "projection_head.")
    predictor, predictor_prefix = _lightly_head(state, "prediction_head.")
    parts = SourceParts(
        backbone={}, projector=projector, predictor=predictor, center=state.get("criterion.center")
    )
    parts.backbone = _lightly_backbone_at(state, parts, "backbone.") or {}
    inner = _lightly_inner(state, "backbone.")
    parts.prefixes = {"backbone": inner, "projector": projector_prefix, "predictor": predictor_prefix}
    kept = ["backbone.", "projection_head.", "prediction_head."]
    for backbone_prefix, head_prefix in LIGHTLY_MOMENTUM:
        if any(k.startswith((backbone_prefix, head_prefix)) for k in state):
            parts.momentum_backbone = _lightly_backbone_at(
                state, parts, backbone_prefix, "classifier of the momentum backbone"
            )
            parts.momentum_projector, momentum_prefix = _lightly_head(state, head_prefix)
            parts.prefixes |= {
                "momentum_backbone": _lightly_inner(state, backbone_prefix),
                "momentum_projector": momentum_prefix,
            }
            kept += [backbone_prefix, head_prefix]
            break
    for prefix in ("online_classifier.", "classifier."):
        _drop(state, parts, prefix, "online classifier")
    _report_unknown(state, parts, (*kept, "online_classifier.", "classifier."))
    _tell_method(parts)
    return parts


def _lightly_student_teacher(state: dict[str, Tensor]) -> SourceParts:
    """lightly's DINO: the student (``student_backbone.`` with ``student_head.`` as in its examples, or
    ``student_projection_head.`` as in its ImageNet benchmarks) is the online network, the teacher
    (``teacher_backbone.`` / ``teacher_head.``, or the benchmarks' ``backbone.`` / ``projection_head.``) the
    target; the loss centre is ``criterion.center``."""
    parts = SourceParts(backbone={}, center=state.get("criterion.center"))
    parts.backbone = _lightly_backbone_at(state, parts, "student_backbone.") or {}
    head_prefix = next(
        (p for p in LIGHTLY_STUDENT_HEADS if any(k.startswith(p) for k in state)), LIGHTLY_STUDENT_HEADS[0]
    )
    parts.projector, projector_prefix = _lightly_head(state, head_prefix)
    parts.prefixes = {"backbone": _lightly_inner(state, "student_backbone."), "projector": projector_prefix}
    kept = ["student_backbone.", head_prefix]
    for backbone_prefix, heads in LIGHTLY_TEACHERS:
        if any(k.startswith(backbone_prefix) for k in state):
            teacher_head = next((p for p in heads if any(k.startswith(p) for k in state)), heads[0])
            parts.momentum_backbone = _lightly_backbone_at(
                state, parts, backbone_prefix, "classifier of the teacher backbone"
            )
            parts.momentum_projector, momentum_prefix = _lightly_head(state, teacher_head)
            parts.prefixes |= {
                "momentum_backbone": _lightly_inner(state, backbone_prefix),
                "momentum_projector": momentum_prefix,
            }
            kept += [backbone_prefix, teacher_head]
            break
    for prefix in ("online_classifier.", "classifier."):
        _drop(state, parts, prefix, "online classifier")
    _report_unknown(state, parts, (*kept, "online_classifier.", "classifier.", "criterion."))
    _tell_method(parts)
    return parts


def _dino_network(state: dict[str, Tensor], name: str) -> tuple[dict[str, Tensor], str]:
    """One network of a DINO training checkpoint (``student`` or ``teacher``; ``""``: the whole file) without
    its DDP ``module.`` prefix, and where its keys start in the file."""
    prefix = f"{name}." if name else ""
    network = _under(state, prefix)
    if network and all(k.startswith("module.") for k in network):
        prefix += "module."
        network = _under(network, "module.")
    return network, prefix


def _dino(state: dict[str, Tensor]) -> SourceParts:
    """facebookresearch/dino: a backbone-only release (``dino_deitsmall16_pretrain.pth``: the teacher's
    backbone, a timm-named ViT or a torchvision ResNet without ``fc``), or a training checkpoint
    (``checkpoint.pth``, ``*_full_checkpoint.pth``) whose ``student`` (``module.backbone.*``, ``module.head.*``)
    and ``teacher`` (``backbone.*``, ``head.*``; with ``module.`` where it was wrapped in DDP) become the online
    network and the target, with its loss centre ``dino_loss.center``; a lone ``MultiCropWrapper`` state dict
    (``backbone.*``, ``head.*``) is the online network. The head is DINO's ``DINOHead``: ``mlp.*`` (Linear, GELU,
    ..., BatchNorm with ``use_bn_in_head``), ``last_layer.weight_g`` and ``last_layer.weight_v``."""
    networks = [n for n in DINO_NETWORKS if any(k.startswith(f"{n}.") for k in state)]
    if not networks and not any(k.startswith(("backbone.", "module.backbone.")) for k in state):
        if not is_vit_state(state) and "conv1.weight" not in state:
            raise CheckpointError(
                f"neither a ViT or ResNet state dict nor DINO's student and teacher networks "
                f"({_first(sorted(state))}): check imported.layout"
            )
        return _plain_backbone(state)
    online_name = "student" if "student" in networks else (networks[0] if networks else "")
    online, online_prefix = _dino_network(state, online_name)
    if not any(k.startswith("backbone.") for k in online):
        raise CheckpointError(
            f"no '{online_prefix}backbone.*' keys in the {online_name or 'file'}'s network: check imported.layout"
        )
    parts = SourceParts(
        backbone=_without_fc(_under(online, "backbone.")),
        projector=_under(online, "head.") or None,
        prefixes={"backbone": online_prefix + "backbone.", "projector": online_prefix + "head."},
        center=state.get("dino_loss.center"),
    )
    _drop_classifier(state, parts, online_prefix + "backbone.")
    if online_name == "student" and "teacher" in networks:
        teacher, teacher_prefix = _dino_network(state, "teacher")
        parts.momentum_backbone = _without_fc(_under(teacher, "backbone.")) or None
        parts.momentum_projector = _under(teacher, "head.") or None
        parts.prefixes |= {
            "momentum_backbone": teacher_prefix + "backbone.",
            "momentum_projector": teacher_prefix + "head.",
        }
    elif online_name == "teacher":
        parts.notes.append("the file holds DINO's teacher alone; it becomes the online network")
    _report_unknown(
        state, parts, (*(f"{n}." for n in DINO_NETWORKS), "dino_loss.", "backbone.", "head.", "module.")
    )
    _tell_method(parts)
    return parts


def _bissl_reference(state: dict[str, Tensor], head: dict[str, Tensor] | None) -> SourceParts:
    """The authors' pretext files: a timm ResNet backbone state dict (classifier already removed) and a head
    file with ``projector.*`` (+ ``predictor.*`` for BYOL; bare ``0.*`` indices in the first version). A whole
    model state dict (``backbone.*``, ``head.projector.*``) works too; its BYOL target copies are dropped."""
    outer = ""  # where the head's keys sit in the file: a whole model's head.*, or the head file itself
    if any(k.startswith("backbone.") for k in state):
        backbone = _under(state, "backbone.")
        in_file = _under(state, "head.") or {k: v for k, v in state.items() if k.startswith("projector.")}
        outer = "head." if head is None and any(k.startswith("head.") for k in state) else ""
        head = head or in_file or None
    else:
        backbone = dict(state)
    parts = SourceParts(
        backbone=_without_fc(backbone),
        prefixes={"projector": f"{outer}projector.", "predictor": f"{outer}predictor."},
    )
    _drop(state, parts, "fc.", "classifier")
    for prefix in ("backbone_target.", "projector_target."):
        _drop(state, parts, prefix, "BYOL target network (re-copied from the online network)")
    if head is not None:
        if any(k.startswith("projector.") for k in head):
            parts.projector = _under(head, "projector.")
            parts.predictor = _under(head, "predictor.") or None
        elif all(k.split(".")[0].isdigit() for k in head):
            parts.projector = dict(head)
            parts.prefixes["projector"] = ""
        else:
            raise CheckpointError(
                f"the head file holds neither 'projector.*' nor indexed layer keys ({_first(sorted(head))}); "
                "pass the authors' *_head_* (or *_proj*) file as imported.head"
            )
    if parts.predictor is not None:  # the authors released SimCLR and BYOL; only BYOL has a predictor
        parts.candidates, parts.structure = ("byol",), "a predictor"
    return parts


def split_layout(
    layout: str,
    state: dict[str, Tensor],
    head: dict[str, Tensor] | None = None,
    *,
    beside: dict[str, Any] | None = None,
    source: Path | None = None,
) -> SourceParts:
    """Apply a layout's naming rules to a loaded state dict; ``beside`` holds the checkpoint's other entries
    and ``source`` its path (solo-learn states its method in its hyper-parameters or an ``args.json``)."""
    if layout not in LAYOUTS:
        raise ConfigError(
            f"config key 'imported.layout' got {layout!r}; allowed values: {', '.join(LAYOUTS)}"
        )
    if head is not None and layout != "bissl-reference":
        raise ConfigError("imported.head is read only with imported.layout=bissl-reference")
    if layout in ("torchvision", "timm"):
        return _plain_backbone(state)
    if layout == "dino":
        return _dino(state)
    if layout == "solo-learn":
        parts = _solo_learn(state)
        parts.method, parts.stated_by = _solo_learn_stated_method(beside or {}, source)
        return parts
    if layout == "lightly":
        return _lightly(state)
    return _bissl_reference(state, head)


def check_backbone(
    mapped: dict[str, Tensor], backbone: nn.Module, describe: str, hint: str
) -> dict[str, Tensor]:
    """``mapped`` checked key by key and shape by shape against ``backbone``: one line naming the missing and
    unexpected keys and the shape mismatches, or the state dict to load (BatchNorm's ``num_batches_tracked``,
    absent from some releases, is filled in)."""
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(mapped[k].shape)}, model {list(expected[k].shape)}"
        for k in expected
        if k in mapped and mapped[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_first(mismatched)})")
    if problems:
        raise CheckpointError(f"{describe} does not fit the backbone: {'; '.join(problems)}; {hint}")
    loaded = {k: mapped.get(k, v) for k, v in expected.items()}
    return {k: v.to(expected[k].dtype) for k, v in loaded.items()}


@dataclass
class _Layer:
    index: str
    kind: str  # "linear" or "bn"
    tensors: dict[str, Tensor]

    @property
    def width(self) -> tuple[int, ...]:
        """Linear: (out, in); BatchNorm: (features,)."""
        return tuple(self.tensors["weight" if self.kind == "linear" else "running_mean"].shape)

    def key(self, prefix: str) -> str:
        """The layer's first tensor as the file names it: ``weight``, or ``running_mean`` without affine."""
        return f"{prefix}{self.index}.{'weight' if 'weight' in self.tensors else 'running_mean'}"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensors["weight" if "weight" in self.tensors else "running_mean"].shape)

    def describe(self) -> str:
        if self.kind == "linear":
            return f"Linear({self.width[1]}, {self.width[0]})"
        return f"BatchNorm1d({self.width[0]}{'' if 'weight' in self.tensors else ', affine=False'})"


def _layers(state: dict[str, Tensor]) -> list[_Layer]:
    """Index-keyed ``nn.Sequential`` state dict -> its Linear and BatchNorm layers in order."""
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or "." in name:
            raise ValueError(f"'{key}' is not a layer of a sequential MLP")
        grouped.setdefault(index, {})[name] = value
    layers = []
    for index in sorted(grouped, key=int):
        tensors = grouped[index]
        if "running_mean" in tensors:
            layers.append(_Layer(index, "bn", tensors))
        elif "weight" in tensors and tensors["weight"].ndim == 2:
            layers.append(_Layer(index, "linear", tensors))
        else:
            raise ValueError(f"layer {index} ({', '.join(sorted(tensors))}) is neither Linear nor BatchNorm")
    return layers


def _linear_widths(layers: list[_Layer]) -> list[int]:
    """Input width, then the output width of every Linear layer."""
    linears = [layer.width for layer in layers if layer.kind == "linear"]
    return [linears[0][1], *(w[0] for w in linears)] if linears else []


def _hidden_bn(layers: list[_Layer]) -> bool:
    """Whether a BatchNorm follows a hidden Linear layer (one that another Linear layer follows)."""
    last_linear = max((i for i, layer in enumerate(layers) if layer.kind == "linear"), default=-1)
    return any(layer.kind == "bn" for layer in layers[:last_linear])


def _output_bn(layers: list[_Layer]) -> str:
    """How an MLP ends: ``none`` (a Linear layer), ``plain`` (BatchNorm without affine) or ``affine``."""
    if not layers or layers[-1].kind != "bn":
        return "none"
    return "affine" if "weight" in layers[-1].tensors else "plain"


def _shape(layers: list[_Layer]) -> str:
    widths = _linear_widths(layers)
    if not widths:
        return "no Linear layer"
    text = "-".join(map(str, widths)) + (" with BatchNorm" if _hidden_bn(layers) else " without BatchNorm")
    if layers[-1].kind == "bn":
        text += ", ending in BatchNorm" + ("" if "weight" in layers[-1].tensors else " without affine")
    return text


def _width_fix(role: str, theirs: list[_Layer], mine: list[_Layer]) -> str:
    """The ``pretext.*`` widths that build ``theirs`` where they differ from ``mine``."""
    their_widths, my_widths = _linear_widths(theirs), _linear_widths(mine)
    if not their_widths or not my_widths:
        return ""
    settings = []
    hidden_key = "predictor_hidden" if role == "predictor" else "projector_hidden"
    if their_widths[1:-1] != my_widths[1:-1]:
        settings.append(f"pretext.{hidden_key}=[{','.join(map(str, their_widths[1:-1]))}]")
    if their_widths[-1] != my_widths[-1]:
        settings.append(f"pretext.projector_dim={their_widths[-1]}")
    if their_widths[0] != my_widths[0]:
        source = "projector_dim" if role == "predictor" else "model.backbone"
        settings.append(f"the input width {their_widths[0]} ({source})")
    return "set " + " and ".join(settings)


def _first_difference(theirs: list[_Layer], mine: list[_Layer], what: str, prefix: str) -> str | None:
    """The first layer where the checkpoint's MLP and the configured one differ in kind or width: its key in
    the file and both shapes."""
    for position in range(max(len(theirs), len(mine))):
        a = theirs[position] if position < len(theirs) else None
        b = mine[position] if position < len(mine) else None
        if a is None and b is not None:
            return f"the checkpoint's {what} ends where the configured one has a {b.describe()} (layer {b.index})"
        if a is not None and b is None:
            return f"{a.key(prefix)}: checkpoint {list(a.shape)} ({a.describe()}), which the configured {what} lacks"
        if a is not None and b is not None and (a.kind != b.kind or a.width != b.width):
            return (
                f"{a.key(prefix)}: checkpoint {list(a.shape)} ({a.describe()}), "
                f"model {list(b.shape)} ({b.describe()})"
            )
    return None


def _misfit(
    what: str, theirs: list[_Layer], mine: list[_Layer], problem: str, fix: str, hint: str
) -> CheckpointError:
    advice = f"{fix}, or {hint}" if fix else hint
    return CheckpointError(
        f"the {what} in the checkpoint ({_shape(theirs)}) does not fit the configured one ({_shape(mine)}): "
        f"{problem}; {advice}"
    )


def map_mlp(
    source: dict[str, Tensor], target: nn.Module, what: str, hint: str, *, prefix: str = ""
) -> dict[str, Tensor]:
    """A source MLP (Linear / BatchNorm / activation as ``nn.Sequential``) as ``target``'s state dict.

    The functions agree exactly: a Linear bias in front of a BatchNorm is folded into its running mean (the
    batch statistics cancel it in training mode), a missing output bias becomes zero, and a BatchNorm without
    affine parameters becomes one with weight 1 and bias 0. Anything else that differs ends with one line
    naming the first differing key (``prefix``: the file's key prefix of the MLP) and the ``pretext.*`` setting
    that builds the checkpoint's MLP, then ``hint``."""
    own = target.state_dict()
    try:
        theirs = _layers(source)
    except ValueError as exc:
        raise CheckpointError(f"the {what} ({prefix}*) is not a plain MLP ({exc}); {hint}") from None
    mine = _layers(own)
    role = "predictor" if "predictor" in what else "projector"
    problem = _first_difference(theirs, mine, what, prefix)
    if problem is not None:
        if _linear_widths(theirs) != _linear_widths(mine):
            fix = _width_fix(role, theirs, mine)
        elif _hidden_bn(theirs) != _hidden_bn(mine):
            fix = f"set pretext.head_hidden_bn={str(_hidden_bn(theirs)).lower()}"
        elif _output_bn(theirs) != _output_bn(mine):
            fix = f"set pretext.head_output_bn={str(_output_bn(theirs) == 'affine').lower()}"
        else:
            fix = ""
        raise _misfit(what, theirs, mine, problem, fix, hint)
    out: dict[str, Tensor] = {}
    carried_bias: Tensor | None = None
    for position, (layer, slot) in enumerate(zip(theirs, mine, strict=True)):
        following = mine[position + 1].kind if position + 1 < len(mine) else None
        if layer.kind == "linear":
            out[f"{slot.index}.weight"] = layer.tensors["weight"]
            bias = layer.tensors.get("bias")
            if "bias" in slot.tensors:
                out[f"{slot.index}.bias"] = (
                    bias if bias is not None else torch.zeros_like(slot.tensors["bias"])
                )
            elif bias is not None and following == "bn":
                carried_bias = bias
            elif bias is not None and bool(bias.abs().max() > 0):
                output = following is None or all(later.kind != "linear" for later in mine[position + 1 :])
                setting = "head_output_bias" if output else "head_hidden_bias"
                kind = "output" if output else "hidden"
                problem = f"the {what}'s {kind} layer has a bias ({prefix}{layer.index}.bias) that the configured {what} lacks"
                raise _misfit(what, theirs, mine, problem, f"set pretext.{setting}=true", hint)
        else:
            affine = "weight" in layer.tensors
            if affine and "weight" not in slot.tensors:
                identity = bool((layer.tensors["weight"] == 1).all()) and bool(
                    (layer.tensors["bias"] == 0).all()
                )
                if not identity:
                    problem = (
                        f"{prefix}{layer.index}.weight and .bias: the checkpoint's BatchNorm has trained affine "
                        f"parameters, the configured {what}'s BatchNorm has none"
                    )
                    raise _misfit(what, theirs, mine, problem, "set pretext.head_output_bn=true", hint)
            for name, value in slot.tensors.items():
                if name in layer.tensors:
                    out[f"{slot.index}.{name}"] = layer.tensors[name]
                elif name == "weight":
                    out[f"{slot.index}.{name}"] = torch.ones_like(value)
                elif name == "bias":
                    out[f"{slot.index}.{name}"] = torch.zeros_like(value)
                else:
                    out[f"{slot.index}.{name}"] = value
            if carried_bias is not None:
                out[f"{slot.index}.running_mean"] = out[f"{slot.index}.running_mean"] - carried_bias
                carried_bias = None
    return {k: v.to(own[k].dtype) for k, v in out.items()}


# The weight-normalised last layer of a DINO head: old-style ``weight_norm`` names, or those of
# ``torch.nn.utils.parametrizations.weight_norm`` (original0 = g, original1 = v).
_WEIGHT_NORM_NAMES = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def _dino_mlp(source: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """The MLP of a DINO head state dict as an index-keyed sequential (``mlp.*`` of DINO's and solo-learn's
    ``DINOHead``, ``layers.*`` of lightly's ``DINOProjectionHead``; a one-layer ``mlp`` is layer 0), and its
    key prefix inside the head."""
    for prefix in ("mlp.", "layers."):
        inner = _under(source, prefix)
        if inner:
            if all("." not in k for k in inner):  # a single Linear layer: mlp.weight, mlp.bias
                return {f"0.{k}": v for k, v in inner.items()}, prefix
            return inner, prefix
    return {}, "mlp."


def map_dino_head(
    source: dict[str, Tensor], target: nn.Module, what: str, hint: str, *, prefix: str = ""
) -> dict[str, Tensor]:
    """A DINO head from a file (MLP, then the weight-normalised ``last_layer``) as ``target``'s state dict
    (bissl's ``DINOHead``: ``mlp.*``, ``last_layer.weight_g``, ``last_layer.weight_v``).

    The MLP is matched layer by layer as ``map_mlp`` does (widths name ``pretext.projector_hidden`` and
    ``projector_dim``, the bottleneck); a head with BatchNorm (``use_bn_in_head``, lightly's
    ``batch_norm=True``) is refused, as bissl's DINO head has none. The last layer's ``weight_v`` must be
    ``pretext.dino_out_dim`` × bottleneck, and trained scales ``weight_g`` need
    ``pretext.dino_norm_last_layer=false``."""
    own = target.state_dict()
    mlp_state, mlp_prefix = _dino_mlp(source)
    last = _under(source, "last_layer.")
    names = next((pair for pair in _WEIGHT_NORM_NAMES if all(n in last for n in pair)), None)
    if not mlp_state or names is None:
        raise CheckpointError(
            f"the {what} ({prefix}*) is not a DINO head (an MLP under mlp.* or layers.*, then last_layer.weight_g "
            f"and last_layer.weight_v; found {_first(sorted(source))}); {hint}"
        )
    try:
        layers = _layers(mlp_state)
    except ValueError as exc:
        raise CheckpointError(
            f"the {what} ({prefix}{mlp_prefix}*) is not a plain MLP ({exc}); {hint}"
        ) from None
    batchnorm = next((layer for layer in layers if layer.kind == "bn"), None)
    if batchnorm is not None:
        raise CheckpointError(
            f"the {what} has BatchNorm layers ({batchnorm.key(prefix + mlp_prefix)}: DINO's use_bn_in_head), "
            f"which bissl's DINO head does not have; {hint}"
        )
    mlp_module: Any = getattr(target, "mlp")  # noqa: B009
    out = {
        f"mlp.{k}": v
        for k, v in map_mlp(mlp_state, mlp_module, what, hint, prefix=prefix + mlp_prefix).items()
    }
    scale, direction = last[names[0]], last[names[1]]
    mine_v, mine_g = own["last_layer.weight_v"], own["last_layer.weight_g"]
    key_v = f"{prefix}last_layer.{names[1]}"
    if direction.shape != mine_v.shape:
        fix = (
            f"set pretext.dino_out_dim={direction.shape[0]}, or "
            if direction.ndim == 2 and direction.shape[1] == mine_v.shape[1]
            else ""
        )
        raise CheckpointError(
            f"the {what}'s last layer does not fit the configured one: {key_v}: checkpoint "
            f"{list(direction.shape)}, model {list(mine_v.shape)}; {fix}{hint}"
        )
    scale = scale.reshape(mine_g.shape)
    trained_scale = any(name == "last_layer.weight_g" for name, _ in target.named_parameters())
    if not trained_scale and not bool((scale == 1).all()):
        raise CheckpointError(
            f"{prefix}last_layer.{names[0]}: the checkpoint's {what} has trained prototype scales (DINO's "
            f"norm_last_layer=False), the configured one fixes them at 1; set pretext.dino_norm_last_layer=false, or "
            f"{hint}"
        )
    out |= {"last_layer.weight_g": scale, "last_layer.weight_v": direction}
    return {k: v.to(own[k].dtype) for k, v in out.items()}


def _map_head(
    source: dict[str, Tensor], target: nn.Module, what: str, hint: str, *, prefix: str = ""
) -> dict[str, Tensor]:
    """A head from a file as ``target``'s state dict: a DINO head (``map_dino_head``) or an MLP (``map_mlp``)."""
    if hasattr(target, "last_layer"):
        return map_dino_head(source, target, what, hint, prefix=prefix)
    return map_mlp(source, target, what, hint, prefix=prefix)


def _named(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def _either(methods: tuple[str, ...]) -> str:
    names = [_named(m) for m in methods]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def _resolve_method(
    parts: SourceParts, config: Config, source: str, layout: str, notes: list[str]
) -> tuple[str | None, str]:
    """The method that trained the checkpoint and what says so: its stated method, else ``imported.method``,
    else its keys. A head of another method than ``pretext.method`` (or of one bissl does not train) is refused
    in one line unless ``imported.projector=false`` takes the backbone alone; a head whose keys fit several
    methods is taken as ``pretext.method``'s, and the notes say so."""
    wanted = config.pretext.method
    told = config.imported.method
    keys = f"{layout} keys: {parts.structure}"
    method: str | None = None
    evidence = ""
    if parts.method is not None:
        method, evidence = parts.method, parts.stated_by
        if told is not None and told != method:
            raise CheckpointError(
                f"checkpoint '{source}' holds a {_named(method)} model ({evidence}) but imported.method is "
                f"'{told}'; set imported.method={method} or leave it out"
            )
    elif told is not None:
        if parts.candidates is not None and told not in parts.candidates:
            fits = f"a {_either(parts.candidates)} model" if parts.candidates else "none of bissl's methods"
            raise CheckpointError(
                f"imported.method is '{told}' but checkpoint '{source}' holds {parts.structure} ({layout}), "
                f"which fits {fits}; check imported.method and imported.layout"
            )
        method, evidence = told, "imported.method"
    elif parts.candidates is not None and len(parts.candidates) == 1:
        method, evidence = parts.candidates[0], keys
    takes_head = parts.projector is not None and config.imported.projector
    backbone_alone = "pass imported.projector=false to import its backbone alone"
    if method is not None and method not in METHODS:
        held = (
            f"a model of {evidence}" if parts.method is not None else f"a {_named(method)} model ({evidence})"
        )
        if takes_head:
            raise CheckpointError(
                f"checkpoint '{source}' holds {held}, a method bissl does not train "
                f"(pretext.method: {', '.join(METHODS)}); {backbone_alone}"
            )
        notes.append(f"the checkpoint holds {held}; its backbone alone is imported")
    elif method is not None and method != wanted:
        if takes_head:
            raise CheckpointError(
                f"checkpoint '{source}' holds a {_named(method)} model ({evidence}) but pretext.method is "
                f"'{wanted}'; pass pretext.method={method} (or imported.projector=false for its backbone alone)"
            )
        notes.append(
            f"the checkpoint holds a {_named(method)} model ({evidence}); its backbone alone goes into "
            f"pretext.method={wanted}"
        )
    elif method is not None:
        notes.append(f"the checkpoint holds a {_named(method)} model ({evidence})")
    elif method is None and parts.candidates == ():
        if takes_head:
            raise CheckpointError(
                f"checkpoint '{source}' holds {parts.structure} ({layout}), which none of bissl's methods has "
                f"(pretext.method: {', '.join(METHODS)}); {backbone_alone}"
            )
        notes.append(f"the checkpoint holds {parts.structure}; its backbone alone is imported")
    elif method is None and parts.candidates:
        if wanted not in parts.candidates:
            if takes_head:
                raise CheckpointError(
                    f"checkpoint '{source}' holds a {_either(parts.candidates)} model ({keys}) but "
                    f"pretext.method is '{wanted}'; pass pretext.method and imported.method as one of "
                    f"{', '.join(parts.candidates)} (or imported.projector=false for its backbone alone)"
                )
            notes.append(
                f"the checkpoint holds a {_either(parts.candidates)} model; its backbone alone is imported"
            )
        else:
            evidence = f"assumed from pretext.method ({keys})"
            notes.append(
                f"the file does not tell which of {_either(parts.candidates)} trained it ({parts.structure}); "
                f"its head is imported as pretext.method={wanted}'s: set imported.method to state the method"
            )
    return method, evidence


def import_pretext(config: Config) -> tuple[PretextTask, dict[str, Any]]:
    """The pretext task (configured backbone, head and target network) with the weights of
    ``config.imported``, and what the import did: channels, the checkpoint's method and what told it, whether
    the projector and the target were imported, what was dropped."""
    spec = config.imported
    if spec.layout is None or spec.checkpoint is None:
        raise ConfigError(
            "bissl import needs --layout NAME and --checkpoint FILE (imported.layout, .checkpoint)"
        )
    name = config.model.backbone
    if name not in RESNETS + VIT_BACKBONES:
        raise ConfigError(
            f"bissl import reads ResNets and ViTs; set model.backbone to one of "
            f"{', '.join(RESNETS + VIT_BACKBONES)} (got {name!r})"
        )
    if name in VIT_BACKBONES and spec.layout not in VIT_LAYOUTS:
        raise ConfigError(
            f"imported.layout={spec.layout} holds ResNets; a ViT (model.backbone={name}) is read from the "
            f"{', '.join(VIT_LAYOUTS)} layouts"
        )
    state, beside = read_checkpoint(spec.checkpoint, trust_pickle=spec.trust_pickle)
    head_state = (
        read_state_dict(spec.head, trust_pickle=spec.trust_pickle, key="imported.head (--head)")
        if spec.head
        else None
    )
    describe = f"checkpoint '{spec.checkpoint}' (layout {spec.layout})"
    try:
        parts = split_layout(spec.layout, state, head_state, beside=beside, source=Path(spec.checkpoint))
    except CheckpointError as exc:
        raise CheckpointError(f"{describe}: {exc}") from None
    notes = [f"dropped {item}" for item in parts.dropped] + parts.notes
    _check_backbone_kind(parts.backbone, name, describe)
    method, evidence = _resolve_method(parts, config, str(spec.checkpoint), spec.layout, notes)
    conv1 = parts.backbone.get("conv1.weight")
    channels = _channels(parts.backbone)
    task = make_pretext(config, channels)
    hint = f"check imported.layout, model.backbone={name}" + (
        "" if name in VIT_BACKBONES else f" and model.stem={config.model.stem}"
    )
    fitted, pos_embed = fit_backbone(parts.backbone, task.backbone, config, describe, hint, notes)
    task.backbone.load_state_dict(fitted)
    if spec.layout == "solo-learn" and conv1 is not None and conv1.shape[-1] == 3:
        notes.append(
            "solo-learn's CIFAR ResNets pad their 3x3 stem convolution by 2, model.stem=small by 1: the weights "
            "load, the features differ slightly from solo-learn's own"
        )
    try:
        projector = _import_head(task, config, parts, notes)
        target = _import_target(task, config, parts, projector, notes, describe, hint)
        _import_center(task, parts, projector, notes)
    except CheckpointError as exc:
        raise CheckpointError(f"{describe}: {exc}") from None
    info = {
        "layout": spec.layout,
        "checkpoint": str(spec.checkpoint),
        "head": None if spec.head is None else str(spec.head),
        "channels": channels,
        "method": method,
        "method_evidence": evidence,
        "projector": projector,
        "target": target,
        "notes": notes,
    }
    if name in VIT_BACKBONES:
        info["pos_embed"] = "resampled" if pos_embed else "as in the file"
    return task, info


def _channels(backbone: dict[str, Tensor]) -> int:
    """The input channels of a backbone state dict: its first convolution's (a ResNet's ``conv1``, a ViT's
    patch embedding), else 3."""
    for key in ("conv1.weight", "patch_embed.proj.weight"):
        weight = backbone.get(key)
        if weight is not None and weight.ndim == 4:
            return int(weight.shape[1])
    return 3


def _check_backbone_kind(backbone: dict[str, Tensor], name: str, describe: str) -> None:
    """Refuse in one line a ViT checkpoint for a configured ResNet and the reverse."""
    vit_file, vit_model = is_vit_state(backbone), name in VIT_BACKBONES
    if vit_file == vit_model or not backbone:
        return
    if vit_file:
        shape = vit_shape_of(backbone)
        fix = (
            f"model.backbone={shape.named}"
            if shape and shape.named
            else "model.backbone=vit (and its vit_* keys)"
        )
        raise CheckpointError(
            f"{describe} holds a ViT ({_first([k for k in backbone if not k.startswith('blocks.')])}, blocks.*) "
            f"but model.backbone={name}; set {fix}"
        )
    raise CheckpointError(
        f"{describe} holds a ResNet ({_first(list(backbone))}) but model.backbone={name} is a ViT; set "
        f"model.backbone to the file's ResNet ({', '.join(RESNETS)})"
    )


def fit_backbone(
    mapped: dict[str, Tensor],
    backbone: nn.Module,
    config: Config,
    describe: str,
    hint: str,
    notes: list[str],
) -> tuple[dict[str, Tensor], bool]:
    """``mapped`` checked against ``backbone`` (``check_backbone``), a ViT's shape first
    (``check_vit_shape``), its ``fc_norm`` renamed and its position embedding resampled to the configured
    patch grid where the file's was made for another image size (notes say so; the flag says whether it
    was)."""
    resampled = False
    if config.model.backbone in VIT_BACKBONES:
        image_size = config.data.image_size
        check_vit_shape(
            mapped, backbone, describe=describe, configured=config.model.backbone, image_size=image_size
        )
        mapped, renamed = fc_norm_as_norm(mapped)
        mapped, done = fit_position_embedding(
            mapped,
            backbone,
            describe=describe,
            image_size=image_size,
            resample=config.imported.resample_pos_embed,
        )
        for note in (renamed, done):
            if note is not None and note not in notes:
                notes.append(note)
        resampled = done is not None
    return check_backbone(mapped, backbone, describe, hint), resampled


def _head_modules(task: PretextTask) -> dict[str, nn.Module]:
    """The task's pretext head by part: a projector alone, or projector and predictor (BYOL, MoCo v3)."""
    head: Any = task.head
    if isinstance(head, nn.ModuleDict):
        return {name: head[name] for name in ("projector", "predictor") if name in head}
    return {"projector": head}


def _import_head(task: PretextTask, config: Config, parts: SourceParts, notes: list[str]) -> str:
    """Load the release's projector (and predictor) into the task's head: "imported" or "absent"."""
    wanted = _head_modules(task)
    found = {"projector": parts.projector, "predictor": parts.predictor}
    if "predictor" not in wanted and parts.predictor is not None:
        notes.append(
            f"dropped the predictor ({parts.prefixes.get('predictor', 'predictor.')}*): "
            f"pretext.method={config.pretext.method} has none"
        )
    if not config.imported.projector:
        if parts.projector is not None:
            notes.append("left the release's projector out (imported.projector=false)")
        return "absent"
    hint = "pass imported.projector=false to train a fresh head with pretext.projector_warmup_steps"
    loaded: list[str] = []
    for name, module in wanted.items():
        source = found[name]
        if source is None:
            continue
        prefix = parts.prefixes.get(name, "")
        module.load_state_dict(_map_head(source, module, name, hint, prefix=prefix))
        loaded.append(name)
    missing = [name for name in wanted if name not in loaded]
    if missing:
        notes.append(
            f"no {' or '.join(missing)} in the release"
            + (f" (imported: {', '.join(loaded)})" if loaded else "")
            + "; the BiSSL stage trains the pretext head first (pretext.projector_warmup_steps)"
        )
        return "absent"
    notes.append(f"imported the {' and '.join(loaded)}")
    return "imported"


def _import_center(task: PretextTask, parts: SourceParts, projector: str, notes: list[str]) -> None:
    """DINO: the file's loss centre (the running mean of the teacher's outputs) into the task's ``center``
    buffer when the head was imported; without one in the file the centre starts at zero."""
    center: Any = getattr(task, "center", None)
    if not isinstance(center, Tensor) or projector != "imported":
        return
    if parts.center is None:
        notes.append("no DINO loss centre in the file; the centre starts at zero")
        return
    if parts.center.numel() != center.numel():
        raise CheckpointError(
            f"the DINO loss centre in the file has {parts.center.numel()} entries, the configured head "
            f"{center.numel()} logits (pretext.dino_out_dim)"
        )
    with torch.no_grad():
        center.copy_(parts.center.reshape(center.shape))
    notes.append("imported DINO's loss centre (the running mean of the teacher's outputs)")


def _import_target(
    task: PretextTask,
    config: Config,
    parts: SourceParts,
    projector: str,
    notes: list[str],
    describe: str,
    hint: str,
) -> str | None:
    """BYOL and MoCo v3: the release's momentum backbone and projector as the task's target network
    ("imported"), or a copy of the online network ("online copy") when the release has none or its head was not
    imported; None for a method without a target."""
    names = ("momentum_backbone", "momentum_projector")
    held = [f"{parts.prefixes.get(n, n + '.')}*" for n in names if getattr(parts, n) is not None]
    target: Any = getattr(task, "target", None)
    if target is None:
        if held:
            notes.append(
                f"dropped the momentum networks ({', '.join(held)}): pretext.method={config.pretext.method} "
                "has no target network"
            )
        return None
    if projector == "imported" and len(held) == len(names):
        momentum_backbone = parts.momentum_backbone or {}
        momentum_projector = parts.momentum_projector or {}
        fitted, _ = fit_backbone(
            momentum_backbone, target.backbone, config, f"its momentum backbone ({held[0]})", hint, notes
        )
        target.backbone.load_state_dict(fitted)
        target.projector.load_state_dict(
            _map_head(
                momentum_projector,
                target.projector,
                "momentum projector",
                "pass imported.projector=false to train a fresh head and copy the target from it",
                prefix=parts.prefixes.get("momentum_projector", ""),
            )
        )
        notes.append(f"imported the momentum networks ({', '.join(held)}) as the target network")
        return "imported"
    task.reset_target()
    if held and projector != "imported":
        notes.append(
            f"dropped the momentum networks ({', '.join(held)}) with the head; the target network is a copy "
            "of the online one"
        )
    elif held:
        notes.append(
            f"dropped {held[0]} (the release holds only this momentum network); the target network is a copy of the online one"
        )
    else:
        notes.append("no momentum networks in the release; the target network is a copy of the online one")
    return "online copy"


def import_checkpoint(
    config: Config, run: RunDir, *, stop: Any = None, resume: bool = True
) -> dict[str, Any]:
    """``bissl import``: write ``checkpoints/pretext.pt`` (and ``backbone.pt``) from ``config.imported``."""
    seed_everything(config.seed)  # a head that is not imported starts from a seeded initialisation
    task, info = import_pretext(config)
    path = run.checkpoints / "pretext.pt"
    save_pretext(
        path,
        task,
        config,
        info["channels"],
        steps=0,
        projector=info["projector"],
        target=info["target"],
        imported=info,
    )
    save_backbone(run.path / "backbone.pt", task.backbone, config, info["channels"], stage="import")
    summary = {"stage": "import", "pretext_checkpoint": str(path), **info}
    run.write_summary(summary)
    for note in info["notes"]:
        say(f"import: {note}")
    advice = (
        "; bilevel needs pretext.projector_warmup_steps > 0 with it" if info["projector"] == "absent" else ""
    )
    target = f", target {info['target']}" if info["target"] is not None else ""
    say(
        f"import done: {path} ({config.model.backbone}, {info['channels']} channels, projector "
        f"{info['projector']}{target}{advice})"
    )
    return summary
