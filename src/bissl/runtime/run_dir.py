"""A run's output folder (:class:`RunDir`): its config.yaml guarding against overwriting other work, its
metrics, JSON files and summary, each written atomically, and the one-line error of a failed write."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from bissl import distributed
from bissl.config import Config, dump_yaml, to_dict
from bissl.errors import BisslError
from bissl.runtime.config_paths import PATH_KEYS, RELATIVE_PATHS, lookup, relative_path, relative_paths
from bissl.runtime.records import jsonable
from bissl.runtime.run_files import CONFIG_FILE, SPLITS_FOLDER, holds_work
from bissl.runtime.tensorboard_logs import tensorboard_log, tensorboard_writer_class

# Config keys that shape the saved weights: a checkpoint cannot be resumed under other values.
WEIGHT_SHAPING_KEYS = (
    "model.backbone",
    "model.stem",
    "model.width",
    "model.blocks",
    "model.vit_patch_size",
    "model.vit_depth",
    "model.vit_width",
    "model.vit_heads",
    "model.vit_mlp_ratio",
    "pretext.method",
    "pretext.projector_hidden",
    "pretext.projector_dim",
    "pretext.predictor_hidden",
    "pretext.head_hidden_bias",
    "pretext.head_output_bias",
    "pretext.head_hidden_bn",
    "pretext.head_output_bn",
    "pretext.dino_out_dim",
    "pretext.dino_norm_last_layer",
    "data.pretext",
    "data.downstream",
    "data.channels",
)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


class RunDir:
    """A run's output folder: config.yaml, metrics.jsonl, checkpoints/, summary.json, and TensorBoard event
    files of the metrics when ``logging.tensorboard`` is on.

    Only rank 0 writes. An existing folder made with a different config is refused unless ``resume`` or
    ``force`` is given, so a typo never overwrites finished work; a folder that holds only its config.yaml and
    data splits (a run that failed or stopped before doing any work) binds nothing and is taken over, its
    stale splits dropped. Resuming checkpoints made with other weight-shaping keys (model, pretext head, data)
    is refused before anything is written. With ``anchor`` (the outermost folder of a compare or study),
    summary.json stores the paths of the config that lie inside ``anchor`` relative to this folder.
    """

    def __init__(
        self,
        path: str | Path,
        config: Config,
        *,
        resume: bool = False,
        force: bool = False,
        anchor: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.checkpoints = self.path / "checkpoints"
        self.anchor = anchor
        if not distributed.is_main():
            return
        if config.logging.tensorboard:
            tensorboard_writer_class()
        config_file = self.path / CONFIG_FILE
        text = dump_yaml(config)
        previous = _read_text(config_file)
        if previous is not None and previous != text:
            if not holds_work(self.path):
                self._drop_stale_splits(previous, config)
            elif not (resume or force):
                raise BisslError(
                    f"output folder '{self.path}' holds a run with a different config; "
                    "pass --resume to continue it, --force to reuse it, or choose another --out"
                )
            else:
                self._check_resumable(previous, config)
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise BisslError(
                f"output folder '{_short(str(self.path))}' is not writable ({exc.strerror}); choose another --out"
            ) from None
        self._write_text(config_file, text)

    def _drop_stale_splits(self, previous: str, config: Config) -> None:
        """A run that never started leaves data splits drawn for its own data section; drop them when the data
        section changed, so the new run draws its own."""
        try:
            stored = yaml.safe_load(previous)
        except yaml.YAMLError:
            stored = None
        if lookup(stored, "data") != to_dict(config)["data"]:
            shutil.rmtree(self.path / SPLITS_FOLDER, ignore_errors=True)

    def _check_resumable(self, previous: str, config: Config) -> None:
        """Refuse to continue checkpoints whose weights were shaped by other config values, naming the key."""
        if not self.checkpoints.is_dir() or not any(self.checkpoints.glob("*.pt")):
            return
        try:
            stored = yaml.safe_load(previous)
        except yaml.YAMLError:
            return
        if not isinstance(stored, dict):
            return
        current, default = to_dict(config), to_dict(Config())
        for key in WEIGHT_SHAPING_KEYS:
            old, new = lookup(stored, key, lookup(default, key)), lookup(current, key)
            if old != new:
                raise BisslError(
                    f"output folder '{self.path}' holds checkpoints made with {key}={_plain(old)} "
                    f"(its config.yaml) but this command sets {key}={_plain(new)}; they cannot be continued: "
                    f"use {key}={_plain(old)}, or choose another --out"
                )

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def _write_text(self, target: Path, text: str) -> None:
        """Write a file of the run folder atomically; a full disk or a write error ends in one line."""
        temporary = target.with_name(target.name + ".tmp")
        try:
            temporary.write_text(text)
            os.replace(temporary, target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise write_error(target, exc) from None

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl (and its numbers to the event files, when asked)."""
        if distributed.is_main():
            target = self.path / "metrics.jsonl"
            try:
                with open(target, "a") as stream:
                    stream.write(json.dumps(jsonable(record)) + "\n")
            except OSError as exc:
                raise write_error(target, exc) from None
            if self.config.logging.tensorboard:
                tensorboard_log(self.path).write(record)

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        """Write a JSON file into the run folder (atomically)."""
        target = self.path / name
        if distributed.is_main():
            self._write_text(target, json.dumps(jsonable(data), indent=2))
        return target

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """summary.json: the run's final numbers, written once at the end (with ``anchor``, its config's paths
        inside the anchor are relative to this folder)."""
        config = to_dict(self.config)
        if self.anchor is None:
            return self.write_json("summary.json", {"config": config, **summary})
        config = relative_paths(config, self.path, self.anchor)
        summary = {
            key: relative_path(value, self.path, self.anchor)
            if key in PATH_KEYS and isinstance(value, str)
            else value
            for key, value in summary.items()
        }
        return self.write_json("summary.json", {"config": config, RELATIVE_PATHS: True, **summary})


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)


def write_error(target: Path, exc: OSError) -> BisslError:
    """The one-line error for a failed write of ``target``: a full disk says to free space."""
    if exc.errno in SPACE_ERRORS:
        return BisslError(
            f"no space left to write '{target}'; free space on that disk, then rerun the same command"
        )
    return BisslError(f"cannot write '{target}' ({exc.strerror or exc}); check the folder and rerun")
