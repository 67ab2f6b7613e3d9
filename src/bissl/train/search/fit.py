"""The fine-tuning runs of a search: the config and sub-folder of one run (trials and seeds alike), one
trial's fine-tune on the validation split, and a trial's k-fold cross-validation (``search.folds``)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

from bissl import distributed
from bissl.config import Config, dump_yaml
from bissl.runtime import GracefulStop, RunDir
from bissl.train.finetune import run_finetune
from bissl.train.search.storage import trial_epochs


def _with_settings(config: Config, *, lr: float, weight_decay: float, epochs: int, seed: int) -> Config:
    """The config of one fine-tuning run as it actually runs (written to its folder's config.yaml)."""
    finetune = dataclasses.replace(config.finetune, lr=lr, weight_decay=weight_decay, epochs=epochs)
    return dataclasses.replace(config, seed=seed, finetune=finetune)


def open_subrun(path: Path, config: Config) -> tuple[RunDir, bool]:
    """A sub-folder for one fine-tuning run; returns it and whether its checkpoint may be resumed.

    A folder left by a run with another config (another setting or seed) is cleared first, so its
    checkpoint and summary never pass for this run's.
    """
    config_file = path / "config.yaml"
    stale = config_file.is_file() and config_file.read_text() != dump_yaml(config)
    stale = bool(distributed.broadcast_object(stale))
    if stale and distributed.is_main():
        for name in ("summary.json", "metrics.jsonl"):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
    distributed.barrier()
    return RunDir(path, config, force=True), not stale


def finished_record(path: Path, config: Config, key: str) -> dict[str, Any] | None:
    """The ``key`` record of a sub-run's summary when it finished under ``config``; None when it still has
    to run (no summary, or a config.yaml written by another setting or seed)."""
    summary_file, config_file = path / "summary.json", path / "config.yaml"
    if summary_file.is_file() and config_file.is_file() and config_file.read_text() == dump_yaml(config):
        return dict(json.loads(summary_file.read_text())[key])
    return None


def _fit_trial(
    config: Config,
    folder: Path,
    lr: float,
    weight_decay: float,
    root: int,
    stop: GracefulStop,
    resume: bool,
) -> tuple[RunDir, dict[str, Any]]:
    """Fine-tune one trial's setting in ``trials/trial-{root}``; every rank of a torchrun search runs it.

    With ``search.folds`` = k > 1 the trial is k fine-tunes in ``fold-{i}`` sub-folders, each validated on
    its held-out fold; the trial's ``best`` holds the mean of their best validation values."""
    epochs = trial_epochs(config)
    path = folder / "trials" / f"trial-{root:04d}"
    trial_config = _with_settings(config, lr=lr, weight_decay=weight_decay, epochs=epochs, seed=config.seed)
    sub_run, can_resume = open_subrun(path, trial_config)
    if config.search.folds > 1:
        return sub_run, _cross_validate(trial_config, path, stop, resume)
    result = run_finetune(
        trial_config,
        sub_run,
        lr=lr,
        weight_decay=weight_decay,
        epochs=epochs,
        seed=config.seed,
        splits=("val",),
        stop=stop,
        resume=resume and can_resume,
    )
    return sub_run, result


def _cross_validate(config: Config, path: Path, stop: GracefulStop, resume: bool) -> dict[str, Any]:
    """The k fine-tunes of one trial (``search.folds``): a fold whose summary exists for the same config is
    not repeated. Returns ``best`` with the mean over folds of each fold's best validation value, the summed
    ``seconds`` and every fold's value under ``folds``."""
    folds = config.search.folds
    finetune = config.finetune
    records: list[dict[str, Any]] = []
    for index in range(folds):
        fold_path = path / f"fold-{index}"
        finished = finished_record(fold_path, config, "fold_run")
        if finished is not None:
            records.append(finished)
            continue
        fold_run, can_resume = open_subrun(fold_path, config)
        result = run_finetune(
            config,
            fold_run,
            lr=finetune.lr,
            weight_decay=finetune.weight_decay,
            epochs=finetune.epochs,
            seed=config.seed,
            splits=("val",),
            fold=(index, folds),
            stop=stop,
            resume=resume and can_resume,
        )
        record = {
            "fold": index,
            "primary_metric": result["primary_metric"],
            "best": result["best"],
            "seconds": float(result["seconds"]),
        }
        (fold_run.checkpoints / "last.pt").unlink(missing_ok=True)
        fold_run.write_summary({"stage": "search-fold", "fold_run": record})
        records.append(json.loads(json.dumps(record)))
    metric = str(records[0]["primary_metric"])
    values = [record["best"].get(f"val_{metric}") for record in records]
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(float(v))]
    mean = sum(finite) / len(finite) if len(finite) == len(values) else math.nan
    return {
        "best": {f"val_{metric}": mean, "epoch": None},
        "primary_metric": metric,
        "seconds": sum(float(record["seconds"]) for record in records),
        "folds": [None if v is None else float(v) for v in values],
    }
