"""The study of a search and its storage: the Optuna study (SQLite in the run folder, or the database of
``search.storage``), its name (``search.study_name`` plus a hash of the search problem), the seeded samplers,
and the bookkeeping that lets an interrupted or shared study go on: trials left running by a dead process
are marked failed, and a failed trial's setting is queued again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from bissl.checkpoint import require_file
from bissl.config import Config
from bissl.errors import BisslError

STUDY_FILE = "study.db"
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 300
MAX_ATTEMPTS = 3
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
SEARCH_PARAMS = ("lr", "weight_decay")


def trial_epochs(config: Config) -> int:
    """Epochs of one search trial: ``search.epochs`` when set, else ``finetune.epochs``."""
    return config.search.epochs if config.search.epochs is not None else config.finetune.epochs


def _file_digest(path: str | None) -> str | None:
    """SHA-256 of the backbone file, so machines that hold it under different paths share one study."""
    if path is None:
        return None
    source = require_file(path, "backbone checkpoint", "check backbone=PATH")
    digest = hashlib.sha256()
    with open(source, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def search_fingerprint(config: Config) -> dict[str, Any]:
    """Everything that defines the search problem (not how many trials or seeds are run, nor where)."""
    data = config.data
    fingerprint: dict[str, Any] = {
        "backbone_sha256": _file_digest(config.backbone),
        "data": {
            "downstream": data.downstream,
            "image_size": data.image_size,
            "downstream_limit": data.downstream_limit,
            "val_fraction": data.val_fraction,
            "split_seed": data.split_seed,
        },
        "model": dataclasses.asdict(config.model),
        "downstream_crop_scale": list(config.augment.downstream_crop_scale),
        "finetune": {"batch_size": config.finetune.batch_size, "momentum": config.finetune.momentum},
        "epochs": trial_epochs(config),
        "lr_range": list(config.search.lr_range),
        "weight_decay_range": list(config.search.weight_decay_range),
        "sampler": config.search.sampler,
        "precision": config.precision,
        "seed": config.seed,
    }
    if data.channels != "auto":  # only when set, so studies made before the knob existed keep their names
        fingerprint["data"]["channels"] = data.channels
    if config.finetune.final_lr_ratio != 0.0:  # likewise: only when set
        fingerprint["finetune"]["final_lr_ratio"] = config.finetune.final_lr_ratio
    if config.finetune.optimizer != "sgd":  # likewise: only when set
        fingerprint["finetune"]["optimizer"] = config.finetune.optimizer
    if config.search.folds != 1:  # likewise: only when set
        fingerprint["folds"] = config.search.folds
    return fingerprint


def study_name_for(config: Config) -> str:
    """``search.study_name`` plus a short hash of the search problem: runs that agree on it share a study,
    and a changed backbone or setting never mixes its trials into another study."""
    text = json.dumps(search_fingerprint(config), sort_keys=True)
    return f"{config.search.study_name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def storage_url(config: Config, run_path: Path) -> str:
    """The study database: ``search.storage`` when given, else SQLite ``study.db`` in the run folder."""
    if config.search.storage:
        return config.search.storage
    return f"sqlite:///{(run_path / STUDY_FILE).resolve()}"


def redact_url(url: str) -> str:
    """The storage URL without its password, for logs and summaries."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's RandomSampler (the paper's protocol) or TPESampler, seeded."""
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def trial_seed(seed: int, trial_number: int) -> int:
    """The sampler seed of one trial, from the run seed and the trial number alone: a resumed (or shared)
    study draws new settings instead of replaying the sequence from its start."""
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


def open_study(config: Config, run_path: str | Path, *, study_name: str | None = None) -> optuna.Study:
    """Create or load the study (maximising the validation metric) in its database."""
    url = storage_url(config, Path(run_path))
    name = study_name or study_name_for(config)
    Path(run_path).mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage: optuna.storages.BaseStorage = (
                optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
                )
                if config.search.storage
                else optuna.storages.RDBStorage(url)
            )
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction="maximize",
            load_if_exists=True,
            sampler=make_sampler(config.search.sampler, config.seed),
        )
    except Exception as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise BisslError(
            f"search.storage '{redact_url(url)}' cannot be opened ({reason}); give a database URL such as "
            "sqlite:////abs/path/study.db or postgresql://user:password@host/database"
        ) from None
    if "fingerprint" not in study.user_attrs:
        study.set_user_attr("fingerprint", search_fingerprint(config))
    return study


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(worker: str) -> bool:
    """True when ``worker`` (host:pid) names a process of this host that no longer exists."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def fail_orphaned_trials(study: optuna.Study, *, every_running: bool) -> list[int]:
    """Mark as FAIL the RUNNING trials whose process died: all of them when the study belongs to this run
    folder alone (``every_running``), else those started on this host by a process that is gone (trials of
    other machines fail through the storage heartbeat). Returns their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        if every_running or _process_gone(worker):
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):
                continue
            failed.append(trial.number)
    return failed


def _retry_root(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("retry_root", trial.number))


def enqueue_retries(study: optuna.Study) -> list[int]:
    """Queue a failed trial's setting again (at most MAX_ATTEMPTS runs of one setting); returns the numbers
    of the failed trials that were queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        if (
            trial.state != TrialState.FAIL
            or trial.number in retried
            or set(trial.params) != set(SEARCH_PARAMS)
        ):
            continue
        root = _retry_root(trial)
        if sum(1 for other in trials if _retry_root(other) == root) >= MAX_ATTEMPTS:
            continue
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, "retry_root": root})
        queued.append(trial.number)
    return queued
