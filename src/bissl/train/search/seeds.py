"""The seed runs: ``search.seeds`` fine-tunes at one setting, scored on test, and their statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bissl.config import Config
from bissl.eval.stats import summarize
from bissl.runtime import GracefulStop, RunDir, say
from bissl.train.finetune import run_finetune
from bissl.train.search.fit import _with_settings, finished_record, open_subrun


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
        finished = finished_record(path, seed_config, "seed_run")
        if finished is not None:
            records.append(finished)
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
