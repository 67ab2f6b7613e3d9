"""``bissl search`` (SPEC §4.4): random (or TPE) search over the fine-tuning learning rate and weight
decay on the validation split, then fine-tuning over several seeds at the best setting, scored on test.

The study lives in a database (SQLite in the run folder by default, or ``search.storage``), so an interrupted
search resumes without repeating finished trials and several machines can work on one study. Under torchrun
all ranks fine-tune each trial together (DDP); rank 0 alone talks to the study and announces every trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from bissl import distributed
from bissl.checkpoint import require_file
from bissl.config import Config, dump_yaml
from bissl.errors import BisslError, NonFiniteError
from bissl.eval.stats import summarize
from bissl.runtime import GracefulStop, RunDir, StopRequested, say
from bissl.train.finetune import run_finetune

STUDY_FILE = "study.db"
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 300
POLL_SECONDS = 20
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


def _trial_record(trial: FrozenTrial) -> dict[str, Any]:
    record: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "params": dict(trial.params),
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
    }
    for key in ("diverged", "retry_of", "best_epoch", "seconds", "folds"):
        if key in trial.user_attrs:
            record[key] = trial.user_attrs[key]
    return record


@contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's per-trial lines (and its tracebacks for trials that end by an exception) are silenced:
    the search prints one line per trial itself and lets errors end in one message."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def _wait(stop: GracefulStop, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.requested:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def run_search(
    config: Config,
    run_path: str | Path,
    *,
    stop: GracefulStop | None = None,
    resume: bool = True,
    study_name: str | None = None,
) -> dict[str, Any]:
    """Run trials until ``search.trials`` of them finished; returns the best setting and every trial.

    A trial fine-tunes ``config.backbone`` for ``trial_epochs(config)`` epochs in ``trials/trial-NNNN`` and
    scores the best validation value of the primary metric. Finished trials are COMPLETE ones and PRUNED
    ones (training diverged: non-finite loss); a trial that failed or whose process died is run again with
    the same setting, resuming its checkpoint when its folder holds one.
    """
    stop = stop or GracefulStop()
    folder = Path(run_path)
    log_run = RunDir(folder, config, resume=True, force=True)
    if not distributed.is_main():
        return _follow_trials(config, folder, stop, resume)
    in_trial = [False]
    try:
        name = study_name or study_name_for(config)
        with _optuna_quiet():
            study = open_study(config, folder, study_name=name)
            result = _run_trials(config, folder, study, log_run, stop, resume, name, in_trial)
    except BaseException as error:
        # an error inside a trial reached every rank there (a stop is agreed on, a crash ends torchrun)
        if not in_trial[0] and isinstance(error, StopRequested):
            _tell_followers("stop", error.exit_code - 128)
        elif not in_trial[0]:
            _tell_followers("error", str(error))
        raise
    _tell_followers("done", result)
    return result


def _tell_followers(kind: str, payload: Any = None) -> None:
    """Rank 0 of a torchrun search tells the other ranks what to do next (no-op in one process)."""
    if distributed.is_distributed():
        distributed.broadcast_object((kind, payload))


def _follow_trials(config: Config, folder: Path, stop: GracefulStop, resume: bool) -> dict[str, Any]:
    """The ranks other than 0 of a torchrun search: fine-tune every trial rank 0 announces, together with it,
    until it sends the search result (or a stop or an error, raised here too)."""
    while True:
        message: Any = distributed.broadcast_object(None)
        kind, payload = message
        if kind == "trial":
            lr, weight_decay, root = payload
            try:
                _fit_trial(config, folder, lr, weight_decay, root, stop, resume)
            except NonFiniteError:
                continue
        elif kind == "done":
            return dict(payload)
        elif kind == "stop":
            stop.signum = int(payload)
            stop.check()
        elif kind == "error":
            raise BisslError(str(payload))


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
        summary_file = fold_path / "summary.json"
        config_file = fold_path / "config.yaml"
        if summary_file.is_file() and config_file.is_file() and config_file.read_text() == dump_yaml(config):
            records.append(dict(json.loads(summary_file.read_text())["fold_run"]))
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


def _run_trials(
    config: Config,
    folder: Path,
    study: optuna.Study,
    log_run: RunDir,
    stop: GracefulStop,
    resume: bool,
    study_name: str,
    in_trial: list[bool],
) -> dict[str, Any]:
    """The trial loop of ``run_search``; ``in_trial[0]`` is True while the ranks fine-tune a trial together
    (and stays True when a trial ends by an exception other than divergence)."""
    shared = config.search.storage is not None
    target = config.search.trials
    low_lr, high_lr = config.search.lr_range
    low_wd, high_wd = config.search.weight_decay_range
    orphans = fail_orphaned_trials(study, every_running=not shared)
    if orphans:
        say(f"search: trials {orphans} were left running by a stopped process; they run again")

    def objective(trial: Trial) -> float:
        lr = trial.suggest_float("lr", low_lr, high_lr, log=True)
        weight_decay = trial.suggest_float("weight_decay", low_wd, high_wd, log=True)
        trial.set_user_attr("worker", _worker_id())
        root = int(trial.user_attrs.get("retry_root", trial.number))
        _tell_followers("trial", (lr, weight_decay, root))
        in_trial[0] = True
        try:
            sub_run, result = _fit_trial(config, folder, lr, weight_decay, root, stop, resume)
        except NonFiniteError as error:
            in_trial[0] = False
            trial.set_user_attr("diverged", str(error))
            raise optuna.TrialPruned(str(error)) from None
        in_trial[0] = False
        metric = result["primary_metric"]
        if study.user_attrs.get("primary_metric") != metric:
            study.set_user_attr("primary_metric", metric)
        value = result["best"].get(f"val_{metric}")
        trial.set_user_attr("seconds", float(result["seconds"]))
        if "folds" in result:
            trial.set_user_attr("folds", result["folds"])
        if value is None or not math.isfinite(float(value)):
            trial.set_user_attr("diverged", f"validation {metric} is not finite")
            raise optuna.TrialPruned(f"validation {metric} is not finite")
        trial.set_user_attr("best_epoch", result["best"].get("epoch"))
        (sub_run.checkpoints / "last.pt").unlink(missing_ok=True)
        sub_run.write_summary({"stage": "search-trial", "trial": trial.number, "value": float(value)})
        return float(value)

    def log_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        record = _trial_record(trial)
        log_run.log({"stage": "search", "trial": trial.number, **record})
        finished = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
        params = trial.params
        outcome = f"{record['value']:.2f}" if record["value"] is not None else trial.state.name.lower()
        say(
            f"search trial {trial.number} ({finished}/{target}): lr {params.get('lr', math.nan):.3g} "
            f"wd {params.get('weight_decay', math.nan):.3g} -> {outcome}"
        )

    started = time.perf_counter()
    while True:
        stop.check()
        if shared:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            fail_orphaned_trials(study, every_running=False)
        enqueue_retries(study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(1 for t in trials if t.state in FINISHED_STATES)
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        if finished >= target:
            break
        if finished + running >= target:
            _tell_followers("wait")
            _wait(stop, POLL_SECONDS)
            continue
        study.sampler = make_sampler(config.search.sampler, trial_seed(config.seed, len(trials)))
        study.optimize(objective, n_trials=1, callbacks=[log_trial])
    return _search_result(study, config, folder, study_name, started)


def _search_result(
    study: optuna.Study, config: Config, folder: Path, name: str, started: float
) -> dict[str, Any]:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        raise BisslError(
            f"no search trial reached a finite validation score ({len(trials)} trials, all diverged or "
            "failed); narrow search.lr_range or check the backbone"
        )
    best = max(complete, key=lambda t: (float(t.value or 0.0), -t.number))
    metric = str(study.user_attrs.get("primary_metric", "top1"))
    return {
        "best": {
            "lr": float(best.params["lr"]),
            "weight_decay": float(best.params["weight_decay"]),
            "trial": best.number,
            "value": float(best.value or 0.0),
        },
        "primary_metric": metric,
        "trials": [_trial_record(t) for t in trials],
        "finished": sum(1 for t in trials if t.state in FINISHED_STATES),
        "target": config.search.trials,
        "epochs": trial_epochs(config),
        "sampler": config.search.sampler,
        "study_name": name,
        "storage": redact_url(storage_url(config, folder)),
        "seconds": time.perf_counter() - started,
    }


def _seed_record(
    index: int, seed: int, lr: float, weight_decay: float, result: dict[str, Any], path: Path
) -> dict[str, Any]:
    """Flat test metrics of the last epoch, plus the validation-selected epoch's metrics."""
    last, best = result["last"], result["best"]
    record: dict[str, Any] = {"index": index, "seed": seed, "lr": lr, "weight_decay": weight_decay}
    record.update({key: value for key, value in last.items() if key.startswith("test_")})
    record["epochs"] = last.get("epoch")
    record["best_val"] = {
        key: value for key, value in best.items() if key.startswith(("val_", "test_", "epoch"))
    }
    record["seconds"] = float(result["seconds"])
    record["path"] = str(path)
    return record


def run_seeds(
    config: Config,
    run_path: str | Path,
    lr: float,
    weight_decay: float,
    *,
    stop: GracefulStop | None = None,
    resume: bool = True,
) -> list[dict[str, Any]]:
    """``search.seeds`` fine-tuning runs at one setting (seeds ``config.seed + i``, ``finetune.epochs``
    epochs), each in ``seeds/seed-{i}``; a run whose summary exists for the same config is not repeated."""
    stop = stop or GracefulStop()
    records = []
    for index in range(config.search.seeds):
        seed = config.seed + index
        path = Path(run_path) / "seeds" / f"seed-{index}"
        seed_config = _with_settings(
            config, lr=lr, weight_decay=weight_decay, epochs=config.finetune.epochs, seed=seed
        )
        summary_file = path / "summary.json"
        config_file = path / "config.yaml"
        if (
            summary_file.is_file()
            and config_file.is_file()
            and config_file.read_text() == dump_yaml(seed_config)
        ):
            records.append(dict(json.loads(summary_file.read_text())["seed_run"]))
            continue
        sub_run, can_resume = open_subrun(path, seed_config)
        result = run_finetune(
            seed_config,
            sub_run,
            lr=lr,
            weight_decay=weight_decay,
            epochs=config.finetune.epochs,
            seed=seed,
            splits=("val", "test"),
            stop=stop,
            resume=resume and can_resume,
        )
        record = _seed_record(index, seed, lr, weight_decay, result, path)
        sub_run.write_summary({"stage": "finetune", "seed_run": record})
        metric = "test_" + result["primary_metric"]
        score = float(record.get(metric, math.nan))
        say(f"seed {index + 1}/{config.search.seeds} (seed {seed}): {metric} {score:.2f}")
        records.append(json.loads(json.dumps(record)))
        stop.check()
    return records


def seed_statistics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every test metric (``test_*`` keys with a finite value in every run)."""
    keys = sorted({key for record in records for key in record if key.startswith("test_")})
    statistics: dict[str, Any] = {}
    for key in keys:
        values = [record.get(key) for record in records]
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        if len(numbers) == len(values) and all(math.isfinite(v) for v in numbers):
            statistics[key] = summarize(numbers)
    return statistics


def seeds_at_setting(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> dict[str, Any]:
    """``search.seeds`` fine-tuning runs at ``finetune.lr`` and ``finetune.weight_decay``, without a search
    (a study arm fine-tuned at another arm's chosen setting); summary.json as ``search`` writes it, with
    the setting under ``setting`` in place of the search."""
    lr, weight_decay = config.finetune.lr, config.finetune.weight_decay
    records = run_seeds(config, run.path, lr, weight_decay, stop=stop, resume=resume)
    summary = {
        "stage": "seeds",
        "backbone": config.backbone,
        "setting": {"lr": lr, "weight_decay": weight_decay},
        "seeds": records,
        "summary": seed_statistics(records),
    }
    run.write_summary(summary)
    return summary


def search(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> dict[str, Any]:
    """``bissl search``: the study, then the seeds at its best setting; summary.json holds both."""
    stop = stop or GracefulStop()
    started = time.perf_counter()
    found = run_search(config, run.path, stop=stop, resume=resume)
    best = found["best"]
    say(
        f"search done: best lr {best['lr']:.3g} wd {best['weight_decay']:.3g} "
        f"(trial {best['trial']}, val {found['primary_metric']} {best['value']:.2f}); seeds next"
    )
    seeds = run_seeds(config, run.path, best["lr"], best["weight_decay"], stop=stop, resume=resume)
    statistics = seed_statistics(seeds)
    summary = {
        "stage": "search",
        "backbone": config.backbone,
        "primary_metric": found["primary_metric"],
        "search": found,
        "seeds": seeds,
        "summary": statistics,
        "seconds": time.perf_counter() - started,
    }
    run.write_summary(summary)
    headline = statistics.get("test_" + found["primary_metric"])
    if headline is not None:
        say(
            f"test {found['primary_metric']} over {headline['n']} seeds: "
            f"{headline['mean']:.2f} ± {headline['std']:.2f}"
        )
    return summary
