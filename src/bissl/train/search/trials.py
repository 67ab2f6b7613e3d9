"""The trial loop of a search (``run_search``): on rank 0, trials are asked from the study, fine-tuned
(together with the other ranks under torchrun) and told back, until ``search.trials`` of them finished; then
the best setting and every trial."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from bissl import distributed
from bissl.config import Config
from bissl.errors import BisslError, NonFiniteError
from bissl.runtime import GracefulStop, RunDir, StopRequested, say
from bissl.train.search.fit import _fit_trial
from bissl.train.search.protocol import _follow_trials, _tell_followers
from bissl.train.search.storage import (
    FINISHED_STATES,
    _worker_id,
    enqueue_retries,
    fail_orphaned_trials,
    make_sampler,
    open_study,
    redact_url,
    storage_url,
    study_name_for,
    trial_epochs,
    trial_seed,
)

POLL_SECONDS = 20


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
