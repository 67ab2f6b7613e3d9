"""The fine-tuning search: resume without repeating trials, retries of lost trials, seeds and the summary."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

import bissl.train.search.fit as fit_module
import bissl.train.search.seeds as seeds_module
from bissl.config import Config, load_config
from bissl.errors import BisslError, NonFiniteError
from bissl.runtime import GracefulStop, RunDir, StopRequested
from bissl.train.finetune import run_finetune
from bissl.train.search import (
    fail_orphaned_trials,
    open_study,
    run_search,
    run_seeds,
    search,
    seed_statistics,
    study_name_for,
)

# A trial of this config trains three steps of a width-4 ResNet on 8x8 synthetic images: well under a second.
TINY = [
    "data.downstream=synthetic",
    "data.image_size=8",
    "data.downstream_limit=128",
    "model.width=4",
    "model.blocks=[1]",
    "finetune.batch_size=32",
    "finetune.epochs=1",
    "search.lr_range=[0.001,0.1]",
    "search.weight_decay_range=[0.00001,0.001]",
    "device=cpu",
]


def tiny_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


class RecordingFinetune:
    """Stands in for run_finetune: records each call, then runs the real one (or a stand-in)."""

    def __init__(self, stand_in: Any = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.stand_in = stand_in

    def __call__(self, config: Config, run: RunDir | None, **kwargs: Any) -> dict[str, Any]:
        self.calls.append({"path": None if run is None else run.path, **kwargs})
        if self.stand_in is not None:
            return dict(self.stand_in(config, run, **kwargs))
        return run_finetune(config, run, **kwargs)


def peaked_score(config: Config, run: RunDir | None, **kwargs: Any) -> dict[str, Any]:
    """A fast stand-in for fine-tuning whose validation score peaks at lr = 0.01."""
    value = 90.0 - 10.0 * abs(math.log10(kwargs["lr"]) + 2.0)
    return {
        "best": {"val_top1": value, "epoch": 1},
        "last": {},
        "history": [],
        "seconds": 0.0,
        "primary_metric": "top1",
    }


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name for trial in sorted(study.get_trials(), key=lambda t: t.number)]


def test_interrupted_search_runs_only_the_missing_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = RecordingFinetune(peaked_score)
    monkeypatch.setattr(fit_module, "run_finetune", recorder)
    first = run_search(tiny_config("search.trials=2"), tmp_path)
    assert len(recorder.calls) == 2 and first["finished"] == 2
    study = open_study(tiny_config("search.trials=4"), tmp_path)
    finished_before = {t.number: (t.value, t.datetime_complete) for t in study.get_trials()}
    # A process died while trial 2 was running: it stays RUNNING in the storage.
    lost = study.ask(
        {
            "lr": FloatDistribution(0.001, 0.1, log=True),
            "weight_decay": FloatDistribution(1e-5, 1e-3, log=True),
        }
    )
    assert states(study) == ["COMPLETE", "COMPLETE", "RUNNING"]

    recorder.calls.clear()
    second = run_search(tiny_config("search.trials=4"), tmp_path)

    study = open_study(tiny_config("search.trials=4"), tmp_path)
    assert states(study) == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert len(recorder.calls) == 2
    retry = study.trials[3]
    assert retry.params == lost.params and retry.user_attrs["retry_of"] == 2
    assert recorder.calls[0]["lr"] == lost.params["lr"]
    assert {t.number: (t.value, t.datetime_complete) for t in study.trials[:2]} == finished_before
    assert second["finished"] == 4 and [t["number"] for t in second["trials"]] == [0, 1, 2, 3, 4]
    best = max((t for t in second["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    assert second["best"]["trial"] == best["number"] and second["best"]["lr"] == best["params"]["lr"]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["trial"] for record in logged if record["stage"] == "search"] == [0, 1, 3, 4]


def test_stop_during_a_trial_resumes_it_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config("search.trials=2")
    stop = GracefulStop()
    recorder = RecordingFinetune()

    def stop_in_second_trial(config: Config, run: RunDir | None, **kwargs: Any) -> dict[str, Any]:
        if len(recorder.calls) == 2:
            stop.signum = signal.SIGTERM
        return run_finetune(config, run, **kwargs)

    recorder.stand_in = stop_in_second_trial
    monkeypatch.setattr(fit_module, "run_finetune", recorder)
    with pytest.raises(StopRequested):
        run_search(config, tmp_path, stop=stop)
    checkpoint = tmp_path / "trials" / "trial-0001" / "checkpoints" / "last.pt"
    assert checkpoint.is_file()
    study = open_study(config, tmp_path)
    assert states(study) == ["COMPLETE", "FAIL"]

    recorder.stand_in = None
    result = run_search(config, tmp_path, stop=GracefulStop())
    assert states(open_study(config, tmp_path)) == ["COMPLETE", "FAIL", "COMPLETE"]
    resumed = recorder.calls[-1]
    assert resumed["path"] == tmp_path / "trials" / "trial-0001" and resumed["resume"] is True
    assert resumed["lr"] == study.trials[1].params["lr"]
    assert not checkpoint.exists()
    # The resumed trial scores what an uninterrupted run of the same setting scores.
    params = study.trials[1].params
    uninterrupted = run_finetune(
        config, None, lr=params["lr"], weight_decay=params["weight_decay"], epochs=1, seed=0, splits=("val",)
    )
    assert result["trials"][2]["value"] == pytest.approx(uninterrupted["best"]["val_top1"])


def test_settings_are_seeded_per_trial_and_lie_in_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fit_module, "run_finetune", RecordingFinetune(peaked_score))
    run_search(tiny_config("search.trials=2"), tmp_path / "split")
    in_two_parts = run_search(tiny_config("search.trials=3"), tmp_path / "split")
    at_once = run_search(tiny_config("search.trials=3"), tmp_path / "whole")
    params = [t["params"] for t in in_two_parts["trials"]]
    assert params == [t["params"] for t in at_once["trials"]]
    assert len({p["lr"] for p in params}) == 3
    assert all(0.001 <= p["lr"] <= 0.1 and 1e-5 <= p["weight_decay"] <= 1e-3 for p in params)
    tpe = run_search(tiny_config("search.trials=2", "search.sampler=tpe", "seed=1"), tmp_path / "tpe")
    assert tpe["finished"] == 2 and tpe["sampler"] == "tpe"
    assert tpe["trials"][0]["params"] != params[0]


def test_diverged_trials_count_as_finished_but_never_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def diverges_above_1e_2(config: Config, run: RunDir | None, **kwargs: Any) -> dict[str, Any]:
        if kwargs["lr"] > 1e-2:
            raise NonFiniteError("5 consecutive non-finite finetune loss values")
        return peaked_score(config, run, **kwargs)

    recorder = RecordingFinetune(diverges_above_1e_2)
    monkeypatch.setattr(fit_module, "run_finetune", recorder)
    result = run_search(tiny_config("search.trials=6"), tmp_path)
    diverged = [t for t in result["trials"] if t["state"] == "PRUNED"]
    assert len(recorder.calls) == len(result["trials"]) == 6
    assert diverged and all("non-finite" in t["diverged"] and t["value"] is None for t in diverged)
    assert result["best"]["lr"] <= 1e-2

    monkeypatch.setattr(
        fit_module, "run_finetune", RecordingFinetune(lambda *a, **k: diverges_above_1e_2(*a, lr=1.0))
    )
    with pytest.raises(BisslError, match="no search trial reached a finite validation score"):
        run_search(tiny_config("search.trials=2"), tmp_path / "all-diverge")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_shared_storage_joins_one_study_and_fails_only_dead_local_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = RecordingFinetune(peaked_score)
    monkeypatch.setattr(fit_module, "run_finetune", recorder)
    storage = f"search.storage=sqlite:///{tmp_path / 'shared.db'}"
    run_search(tiny_config("search.trials=2", storage), tmp_path / "machine-a")
    joined = run_search(tiny_config("search.trials=3", storage), tmp_path / "machine-b")
    assert len(recorder.calls) == 3 and joined["finished"] == 3
    assert not (tmp_path / "machine-a" / "study.db").exists()

    study = open_study(tiny_config(storage), tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    workers = {"elsewhere:1": None, f"{socket.gethostname()}:{dead.pid}": None}
    for worker in workers:
        trial = study.ask({"lr": FloatDistribution(0.001, 0.1, log=True)})
        trial.set_user_attr("worker", worker)
        workers[worker] = trial.number
    assert fail_orphaned_trials(study, every_running=False) == [workers[list(workers)[1]]]
    assert study.trials[workers["elsewhere:1"]].state == TrialState.RUNNING  # left to the heartbeat


def test_study_name_follows_the_search_problem(tmp_path: Path) -> None:
    base = study_name_for(tiny_config())
    assert study_name_for(tiny_config("search.trials=7", "search.seeds=2", "device=cpu")) == base
    assert study_name_for(tiny_config("search.epochs=3")) != base
    assert study_name_for(tiny_config("search.lr_range=[0.01,1.0]")) != base
    backbone = tmp_path / "backbone.pt"
    backbone.write_bytes(b"weights")
    assert study_name_for(tiny_config(f"backbone={backbone}")) != base
    with pytest.raises(BisslError, match="cannot be opened"):
        open_study(tiny_config("search.storage=nosuchdb://host/x"), tmp_path)


def test_seeds_run_once_each_and_give_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config("search.seeds=3", "seed=5")
    records = run_seeds(config, tmp_path, 0.01, 1e-4)
    assert [r["seed"] for r in records] == [5, 6, 7] and [r["index"] for r in records] == [0, 1, 2]
    for record in records:
        assert 0.0 <= record["test_top1"] <= 100.0 and record["lr"] == 0.01 and record["epochs"] == 1
        assert (Path(record["path"]) / "summary.json").is_file()
    statistics = seed_statistics(records)
    values = [r["test_top1"] for r in records]
    assert statistics["test_top1"]["n"] == 3
    assert statistics["test_top1"]["mean"] == pytest.approx(np.mean(values))
    assert statistics["test_top1"]["std"] == pytest.approx(np.std(values, ddof=1))

    recorder = RecordingFinetune(peaked_score)
    monkeypatch.setattr(seeds_module, "run_finetune", recorder)
    assert run_seeds(config, tmp_path, 0.01, 1e-4) == records and recorder.calls == []
    # Another setting: every seed runs again, from scratch.
    recorder.stand_in = None
    run_seeds(config, tmp_path, 0.02, 1e-4)
    assert len(recorder.calls) == 3 and all(call["resume"] is False for call in recorder.calls)


def test_search_command_writes_trials_seeds_and_statistics(tmp_path: Path) -> None:
    config = tiny_config("search.trials=3", "search.seeds=2")
    run = RunDir(tmp_path, config)
    summary = search(config, run, stop=GracefulStop())
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["stage"] == "search" and written["primary_metric"] == "top1"
    trials = written["search"]["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    best = max(trials, key=lambda t: t["value"])
    assert written["search"]["best"]["lr"] == best["params"]["lr"]
    assert [s["seed"] for s in written["seeds"]] == [0, 1]
    assert all(s["lr"] == best["params"]["lr"] for s in written["seeds"])
    mean = np.mean([s["test_top1"] for s in written["seeds"]])
    assert written["summary"]["test_top1"]["mean"] == pytest.approx(mean)
    assert summary["summary"]["test_top1"]["n"] == 2
    assert (tmp_path / "study.db").is_file()
