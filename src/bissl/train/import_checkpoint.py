"""``bissl import``: public SSL checkpoints (torchvision, timm, solo-learn, lightly, the BiSSL authors' files)
turned into a pretext checkpoint that every stage accepts.

Each layout names where the backbone, the projector and the BYOL predictor live in the file. Keys are mapped
by those rules only, then checked against the configured backbone: missing keys, unexpected keys and shape
mismatches end the import with one line that names them. Classifier heads and momentum (target) networks are
dropped on purpose and listed in the summary. A release without a projector that fits ``pretext.*`` is
recorded as ``projector: absent``; the BiSSL stage then trains the pretext head first
(``pretext.projector_warmup_steps``).
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bissl.checkpoint import require_file
from bissl.config import Config
from bissl.errors import CheckpointError, ConfigError
from bissl.pretext import PretextTask
from bissl.runtime import RunDir, say, seed_everything
from bissl.train.checkpoint_formats import save_backbone, save_pretext
from bissl.train.model_factory import make_pretext

LAYOUTS = ("torchvision", "timm", "solo-learn", "lightly", "bissl-reference")
RESNETS = ("resnet18", "resnet34", "resnet50")
# lightly's examples keep a torchvision ResNet as nn.Sequential(*children()[:-1]): child index -> name.
SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_SHOWN = 4
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class SourceParts:
    """What a layout found in a file: backbone, projector and predictor state dicts, and what it dropped."""

    backbone: dict[str, Tensor]
    projector: dict[str, Tensor] | None = None
    predictor: dict[str, Tensor] | None = None
    dropped: list[str] = field(default_factory=list)


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


def read_state_dict(
    path: str | Path, *, trust_pickle: bool = False, key: str = "imported.checkpoint (--checkpoint)"
) -> dict[str, Tensor]:
    """The tensors of a checkpoint file: a plain state dict, or the ``state_dict`` / ``model`` entry of a
    training checkpoint (Lightning, timm); a DDP ``module.`` prefix is removed. ``key`` names the setting
    that gave the path in the messages."""
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
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint '{source}' holds no state dict (a mapping of names to tensors)")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint '{source}' holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


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


def _resnet_state_dict(state: dict[str, Tensor]) -> SourceParts:
    """torchvision and timm ResNets: every key is the backbone's but the classifier ``fc``."""
    parts = SourceParts(backbone={k: v for k, v in state.items() if not k.startswith("fc.")})
    _drop(state, parts, "fc.", "classifier")
    return parts


def _solo_learn(state: dict[str, Tensor]) -> SourceParts:
    """solo-learn: ``backbone.``, ``projector.``, BYOL ``predictor.``; its online linear ``classifier.`` and
    momentum networks are dropped."""
    if not any(k.startswith("backbone.") for k in state):
        raise CheckpointError(
            "no 'backbone.*' keys: this is not a solo-learn checkpoint; check imported.layout"
        )
    backbone = _under(state, "backbone.")
    parts = SourceParts(
        backbone={k: v for k, v in backbone.items() if not k.startswith("fc.")},
        projector=_under(state, "projector.") or None,
        predictor=_under(state, "predictor.") or None,
    )
    _drop(state, parts, "backbone.fc.", "classifier")
    _drop(state, parts, "classifier.", "online linear classifier")
    for prefix in ("momentum_backbone.", "momentum_projector."):
        _drop(
            state, parts, prefix, "momentum network (BiSSL re-copies the BYOL target from the online network)"
        )
    _report_unknown(state, parts, ("backbone.", "projector.", "predictor.", "classifier.", "momentum_"))
    return parts


def _lightly(state: dict[str, Tensor]) -> SourceParts:
    """lightly: ``backbone.`` (torchvision names, or ``nn.Sequential`` child indices as in its examples),
    ``projection_head.layers.``, BYOL ``prediction_head.layers.``; momentum/teacher copies and the online
    classifier are dropped."""
    if not any(k.startswith("backbone.") for k in state):
        raise CheckpointError("no 'backbone.*' keys: this is not a lightly checkpoint; check imported.layout")
    backbone: dict[str, Tensor] = {}
    for key, value in _under(state, "backbone.").items():
        head, _, rest = key.partition(".")
        if head.isdigit():
            key = f"{SEQUENTIAL_RESNET.get(head, f'children[{head}]')}.{rest}"
        backbone[key] = value
    parts = SourceParts(
        backbone={k: v for k, v in backbone.items() if not k.startswith("fc.")},
        projector=_under(state, "projection_head.layers.") or None,
        predictor=_under(state, "prediction_head.layers.") or None,
    )
    _drop(state, parts, "backbone.fc.", "classifier")
    kept = ("backbone.", "projection_head.", "prediction_head.")
    unknown = []
    for prefix in sorted({k.split(".")[0] + "." for k in state if not k.startswith(kept)}):
        if any(word in prefix for word in ("momentum", "teacher", "classifier")):
            _drop(state, parts, prefix, "momentum network or online classifier")
        else:
            unknown.append(prefix.rstrip("."))
    if unknown:
        parts.dropped.append(f"entries this layout does not use ({', '.join(unknown)})")
    return parts


def _bissl_reference(state: dict[str, Tensor], head: dict[str, Tensor] | None) -> SourceParts:
    """The authors' pretext files: a timm ResNet backbone state dict (classifier already removed) and a head
    file with ``projector.*`` (+ ``predictor.*`` for BYOL; bare ``0.*`` indices in the first version). A whole
    model state dict (``backbone.*``, ``head.projector.*``) works too; its BYOL target copies are dropped."""
    if any(k.startswith("backbone.") for k in state):
        backbone = _under(state, "backbone.")
        in_file = _under(state, "head.") or {k: v for k, v in state.items() if k.startswith("projector.")}
        head = head or in_file or None
    else:
        backbone = dict(state)
    parts = SourceParts(backbone={k: v for k, v in backbone.items() if not k.startswith("fc.")})
    _drop(state, parts, "fc.", "classifier")
    for prefix in ("backbone_target.", "projector_target."):
        _drop(state, parts, prefix, "BYOL target network (re-copied from the online network)")
    if head is not None:
        if any(k.startswith("projector.") for k in head):
            parts.projector = _under(head, "projector.")
            parts.predictor = _under(head, "predictor.") or None
        elif all(k.split(".")[0].isdigit() for k in head):
            parts.projector = dict(head)
        else:
            raise CheckpointError(
                f"the head file holds neither 'projector.*' nor indexed layer keys ({_first(sorted(head))}); "
                "pass the authors' *_head_* (or *_proj*) file as imported.head"
            )
    return parts


def _report_unknown(state: dict[str, Tensor], parts: SourceParts, known: tuple[str, ...]) -> None:
    unknown = sorted({k.split(".")[0] for k in state if not k.startswith(known)})
    if unknown:
        parts.dropped.append(f"entries this layout does not use ({', '.join(unknown)})")


def split_layout(layout: str, state: dict[str, Tensor], head: dict[str, Tensor] | None = None) -> SourceParts:
    """Apply a layout's naming rules to a loaded state dict."""
    if layout not in LAYOUTS:
        raise ConfigError(
            f"config key 'imported.layout' got {layout!r}; allowed values: {', '.join(LAYOUTS)}"
        )
    if head is not None and layout != "bissl-reference":
        raise ConfigError("imported.head is read only with imported.layout=bissl-reference")
    if layout in ("torchvision", "timm"):
        return _resnet_state_dict(state)
    if layout == "solo-learn":
        return _solo_learn(state)
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
    kind: str  # "linear" or "bn"
    tensors: dict[str, Tensor]

    @property
    def width(self) -> tuple[int, ...]:
        return tuple(self.tensors["weight"].shape)


def _layers(state: dict[str, Tensor]) -> list[tuple[str, _Layer]]:
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
            layers.append((index, _Layer("bn", tensors)))
        elif "weight" in tensors and tensors["weight"].ndim == 2:
            layers.append((index, _Layer("linear", tensors)))
        else:
            raise ValueError(f"layer {index} ({', '.join(sorted(tensors))}) is neither Linear nor BatchNorm")
    return layers


def _shape(layers: list[tuple[str, _Layer]]) -> str:
    linears = [layer.width for _, layer in layers if layer.kind == "linear"]
    if not linears:
        return "no Linear layer"
    widths = [linears[0][1], *(w[0] for w in linears)]
    with_bn = any(layer.kind == "bn" for _, layer in layers)
    return "-".join(map(str, widths)) + (" with BatchNorm" if with_bn else "")


def map_mlp(source: dict[str, Tensor], target: nn.Sequential, what: str, hint: str) -> dict[str, Tensor]:
    """A source MLP (Linear / BatchNorm / activation as ``nn.Sequential``) as ``target``'s state dict.

    The functions agree exactly: a Linear bias in front of a BatchNorm is folded into its running mean (the
    batch statistics cancel it in training mode), a missing output bias becomes zero."""
    own = target.state_dict()
    try:
        theirs = _layers(source)
    except ValueError as exc:
        raise CheckpointError(f"the {what} is not a plain MLP ({exc}); {hint}") from None
    mine = _layers(own)
    fits = [a.kind for _, a in theirs] == [b.kind for _, b in mine] and all(
        a.width == b.width for (_, a), (_, b) in zip(theirs, mine, strict=True)
    )
    if not fits:
        raise CheckpointError(
            f"the {what} in the checkpoint ({_shape(theirs)}) does not fit the configured one ({_shape(mine)}); {hint}"
        )
    out: dict[str, Tensor] = {}
    carried_bias: Tensor | None = None
    for position, ((_, layer), (index, slot)) in enumerate(zip(theirs, mine, strict=True)):
        if layer.kind == "linear":
            out[f"{index}.weight"] = layer.tensors["weight"]
            bias = layer.tensors.get("bias")
            if "bias" in slot.tensors:
                out[f"{index}.bias"] = bias if bias is not None else torch.zeros_like(slot.tensors["bias"])
            elif bias is not None:
                following = mine[position + 1][1].kind if position + 1 < len(mine) else None
                if following == "bn":
                    carried_bias = bias
                elif bool(bias.abs().max() > 0):
                    raise CheckpointError(
                        f"the {what}'s output layer has a bias that the configured projector lacks; {hint}"
                    )
        else:
            for name, value in slot.tensors.items():
                out[f"{index}.{name}"] = layer.tensors.get(name, value)
            if carried_bias is not None:
                out[f"{index}.running_mean"] = out[f"{index}.running_mean"] - carried_bias
                carried_bias = None
    return {k: v.to(own[k].dtype) for k, v in out.items()}


def _head_modules(task: PretextTask, method: str) -> dict[str, nn.Sequential]:
    head: Any = task.head
    if method == "byol":
        return {"projector": head["projector"], "predictor": head["predictor"]}
    return {"projector": head}


def import_pretext(config: Config) -> tuple[PretextTask, dict[str, Any]]:
    """The pretext task (configured backbone and head) with the weights of ``config.imported``, and what the
    import did: channels, whether the projector was imported, what was dropped."""
    spec = config.imported
    if spec.layout is None or spec.checkpoint is None:
        raise ConfigError(
            "bissl import needs --layout NAME and --checkpoint FILE (imported.layout, .checkpoint)"
        )
    if config.model.backbone not in RESNETS:
        raise ConfigError(
            f"bissl import reads ResNets; set model.backbone to one of {', '.join(RESNETS)} "
            f"(got {config.model.backbone!r})"
        )
    state = read_state_dict(spec.checkpoint, trust_pickle=spec.trust_pickle)
    head_state = (
        read_state_dict(spec.head, trust_pickle=spec.trust_pickle, key="imported.head (--head)")
        if spec.head
        else None
    )
    describe = f"checkpoint '{spec.checkpoint}' (layout {spec.layout})"
    try:
        parts = split_layout(spec.layout, state, head_state)
    except CheckpointError as exc:
        raise CheckpointError(f"{describe}: {exc}") from None
    conv1 = parts.backbone.get("conv1.weight")
    channels = int(conv1.shape[1]) if conv1 is not None and conv1.ndim == 4 else 3
    task = make_pretext(config, channels)
    hint = f"check imported.layout, model.backbone={config.model.backbone} and model.stem={config.model.stem}"
    task.backbone.load_state_dict(check_backbone(parts.backbone, task.backbone, describe, hint))
    notes = [f"dropped {item}" for item in parts.dropped]
    if spec.layout == "solo-learn" and conv1 is not None and conv1.shape[-1] == 3:
        notes.append(
            "solo-learn's CIFAR ResNets pad their 3x3 stem convolution by 2, model.stem=small by 1: the weights "
            "load, the features differ slightly from solo-learn's own"
        )
    projector = _import_head(task, config, parts, notes)
    task.reset_target()
    info = {
        "layout": spec.layout,
        "checkpoint": str(spec.checkpoint),
        "head": None if spec.head is None else str(spec.head),
        "channels": channels,
        "projector": projector,
        "notes": notes,
    }
    return task, info


def _import_head(task: PretextTask, config: Config, parts: SourceParts, notes: list[str]) -> str:
    """Load the release's projector (and BYOL predictor) into the task's head: "imported" or "absent"."""
    wanted = _head_modules(task, config.pretext.method)
    found = {"projector": parts.projector, "predictor": parts.predictor}
    if config.pretext.method != "byol" and parts.predictor is not None:
        notes.append("dropped the BYOL predictor (pretext.method is simclr)")
    if not config.imported.projector:
        if parts.projector is not None:
            notes.append("left the release's projector out (imported.projector=false)")
        return "absent"
    hint = (
        "set pretext.projector_hidden / projector_dim (and predictor_hidden) to the release's widths, "
        "or imported.projector=false to train a fresh head with pretext.projector_warmup_steps"
    )
    loaded: list[str] = []
    for name, module in wanted.items():
        source = found[name]
        if source is None:
            continue
        module.load_state_dict(map_mlp(source, module, name, hint))
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


def import_checkpoint(
    config: Config, run: RunDir, *, stop: Any = None, resume: bool = True
) -> dict[str, Any]:
    """``bissl import``: write ``checkpoints/pretext.pt`` (and ``backbone.pt``) from ``config.imported``."""
    seed_everything(config.seed)  # a head that is not imported starts from a seeded initialisation
    task, info = import_pretext(config)
    path = run.checkpoints / "pretext.pt"
    save_pretext(path, task, config, info["channels"], steps=0, projector=info["projector"], imported=info)
    save_backbone(run.path / "backbone.pt", task.backbone, config, info["channels"], stage="import")
    summary = {"stage": "import", "pretext_checkpoint": str(path), **info}
    run.write_summary(summary)
    for note in info["notes"]:
        say(f"import: {note}")
    advice = (
        "; bilevel needs pretext.projector_warmup_steps > 0 with it" if info["projector"] == "absent" else ""
    )
    say(
        f"import done: {path} ({config.model.backbone}, {info['channels']} channels, projector {info['projector']}{advice})"
    )
    return summary
