"""``bissl search``: random (or TPE) search over the fine-tuning learning rate and weight decay on the
validation split, then fine-tuning over several seeds at the best setting, scored on test (docs/method.md,
"Pipeline"; docs/finetune.md).

The study lives in a database (SQLite in the run folder by default, or ``search.storage``), so an interrupted
search resumes without repeating finished trials and several machines can work on one study. Under torchrun
all ranks fine-tune each trial together (DDP); rank 0 alone talks to the study and announces every trial.

The parts: ``storage`` (the study, its name and storage, orphaned trials and retries), ``protocol`` (how rank
0 leads the other ranks), ``fit`` (one trial's fine-tune, k-fold cross-validation, the runs' sub-folders),
``trials`` (the trial loop and its result) and ``seeds`` (the seed runs and their statistics).
"""

from __future__ import annotations

import time
from typing import Any

from bissl.config import Config
from bissl.runtime import GracefulStop, RunDir, say
from bissl.train.search.fit import open_subrun
from bissl.train.search.seeds import run_seeds, seed_statistics, seeds_at_setting
from bissl.train.search.storage import (
    FINISHED_STATES,
    MAX_ATTEMPTS,
    SEARCH_PARAMS,
    STUDY_FILE,
    enqueue_retries,
    fail_orphaned_trials,
    make_sampler,
    open_study,
    redact_url,
    search_fingerprint,
    storage_url,
    study_name_for,
    trial_epochs,
    trial_seed,
)
from bissl.train.search.trials import run_search


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


__all__ = [
    "FINISHED_STATES",
    "MAX_ATTEMPTS",
    "SEARCH_PARAMS",
    "STUDY_FILE",
    "enqueue_retries",
    "fail_orphaned_trials",
    "make_sampler",
    "open_study",
    "open_subrun",
    "redact_url",
    "run_search",
    "run_seeds",
    "search",
    "search_fingerprint",
    "seed_statistics",
    "seeds_at_setting",
    "storage_url",
    "study_name_for",
    "trial_epochs",
    "trial_seed",
]
