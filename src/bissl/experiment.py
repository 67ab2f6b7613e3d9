"""``bissl compare``: the conventional pipeline and BiSSL side by side from one pretext checkpoint.

Parts (each skipped when its output exists, so an interrupted comparison resumes where it stopped):
pretrain → baseline search → baseline seeds; warm-up → bilevel → BiSSL search → BiSSL seeds;
alignment probes and t-SNE of both backbones; statistics; results.json and report.html.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from bissl import distributed
from bissl.config import Config, to_dict
from bissl.errors import ConfigError
from bissl.eval.stats import paired_comparison
from bissl.parts import PART_READS, Parts, read_summary, relative_to_run
from bissl.report import format_compare_table, write_compare_results, write_report
from bissl.report.schema import CompareArm, CompareDifference, CompareResults, Record, SearchOutcome
from bissl.runtime import GracefulStop, RunDir, say

# The training stages (bissl.train.*) are imported inside the functions that run their parts: they load the
# training stack (torchvision models, kornia augmentations, optuna), which a comparison refused by its config
# check, or one whose parts have all finished, does not need.


def _read_metrics(path: Path, stage: str) -> list[Record]:
    file = path / "metrics.jsonl"
    if not file.is_file():
        return []
    records = []
    for line in file.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
    return [r for r in records if isinstance(r, dict) and r.get("stage") == stage]


def _pretrain_part(parts: Parts, config: Config, name: str, folder: Path) -> str:
    from bissl.train.pretrain import pretrain

    parts.run(name, folder, config, pretrain)
    return str(folder / "checkpoints" / "pretext.pt")


def _arm_part(parts: Parts, arm: str, config: Config, backbone: str) -> CompareArm:
    """Search then seeds for one arm's backbone; returns the arm's results block."""
    from bissl.train.search import search

    arm_config = dataclasses.replace(config, backbone=backbone)
    summary = parts.run(f"{arm} search + seeds", parts.root / arm / "finetune", arm_config, search)
    search_block = dict(summary.get("search") or {})
    trials = search_block.get("trials") or []
    found = cast(SearchOutcome, search_block)  # the search's own block, carried as it is
    found["trials"] = [_scalars(trial) | dict(trial.get("params") or {}) for trial in trials]
    seeds = [_scalars(seed) for seed in summary.get("seeds") or []]
    return {"backbone": backbone, "search": found, "seeds": seeds, "summary": summary.get("summary") or {}}


def _scalars(record: dict[str, Any]) -> Record:
    """The flat (number, text, null) entries of a record; nested blocks stay in the part's summary.json."""
    return {k: v for k, v in record.items() if v is None or isinstance(v, int | float | str)}


def _run_parts(parts: Parts, config: Config) -> tuple[dict[str, CompareArm], dict[str, str]]:
    """Every part of both arms in order (in ``parts.dry`` mode: only their checks); returns the arms' results
    blocks and their backbone files."""
    from bissl.train.bilevel_stage import train_bilevel
    from bissl.train.warmup import warmup

    root = parts.root
    if config.pretext_checkpoint is not None:
        pretext = config.pretext_checkpoint
        if config.compare.fairness == "extra-pretext":
            raise ConfigError(
                "compare.fairness=extra-pretext needs compare to run the pretraining itself; drop pretext_checkpoint"
            )
    else:
        pretext = _pretrain_part(parts, config, "pretrain", root / "pretrain")
    arms: dict[str, CompareArm] = {}
    backbones: dict[str, str] = {}
    if "baseline" in config.compare.arms:
        baseline_pretext = pretext
        if config.compare.fairness == "extra-pretext":
            folder = root / "pretrain-baseline"
            baseline_pretext = str(folder / "checkpoints" / "pretext.pt")
            if not parts.dry or read_summary(folder) is not None:  # its step count may need the data
                extra = config.bilevel.alternations * config.bilevel.lower_steps
                base_steps = _pretrain_steps(config)
                longer = dataclasses.replace(
                    config, pretrain=dataclasses.replace(config.pretrain, steps=base_steps + extra)
                )
                _pretrain_part(parts, longer, "pretrain (baseline, extra steps)", folder)
        backbones["baseline"] = baseline_pretext
        arms["baseline"] = _arm_part(parts, "baseline", config, baseline_pretext)
    bissl_config = dataclasses.replace(config, pretext_checkpoint=pretext)
    if "bissl" in config.compare.arms:
        parts.run("warm-up", root / "bissl" / "warmup", bissl_config, warmup)
        head = str(root / "bissl" / "warmup" / "checkpoints" / "head.pt")
        bilevel_config = dataclasses.replace(bissl_config, head_checkpoint=head)
        parts.run("bilevel", root / "bissl" / "bilevel", bilevel_config, train_bilevel)
        lower = str(root / "bissl" / "bilevel" / "lower_backbone.pt")
        backbones["bissl"] = lower
        arms["bissl"] = _arm_part(parts, "bissl", config, lower)
    return arms, backbones


def check_compare(config: Config, out: Path) -> None:
    """Refuse, before anything is written, a comparison whose finished parts in ``out`` were run under other
    values of the keys they read (naming the first such part and key)."""
    parts = Parts(out, GracefulStop(), "compare", dry=True)
    _run_parts(parts, config)
    _alignment_part(parts, config, {})


def compare(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> CompareResults:
    """Run both arms, the analyses and the statistics; write results.json and report.html."""
    stop = stop or GracefulStop()
    root = run.path
    parts = Parts(root, stop, "compare")  # `bissl compare` has run check_compare; the parts check themselves
    arms, backbones = _run_parts(parts, config)
    probes, figures = _alignment_part(parts, config, backbones)
    comparison: dict[str, CompareDifference] = {}
    if "baseline" in arms and "bissl" in arms:
        base_seeds, bissl_seeds = _by_seed(arms["baseline"]["seeds"]), _by_seed(arms["bissl"]["seeds"])
        common = sorted(set(base_seeds) & set(bissl_seeds))
        metrics = sorted({k for s in base_seeds.values() for k in s if k.startswith("test_")})
        for metric in metrics:
            a = [float(cast(float, base_seeds[i][metric])) for i in common]
            b = [float(cast(float, bissl_seeds[i][metric])) for i in common]
            if common:
                paired = paired_comparison(a, b)
                comparison[metric] = cast(
                    CompareDifference, paired | {"ci95": [paired["ci_low"], paired["ci_high"]]}
                )
    for block in arms.values():
        block["backbone"] = relative_to_run(str(block["backbone"]), root)
    results: CompareResults = {
        "title": f"BiSSL vs conventional pipeline: {config.data.pretext} -> {config.data.downstream}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "primary_metric": _primary_metric(arms),
        "datasets": {"pretext": config.data.pretext, "downstream": config.data.downstream},
        "config": to_dict(config),
        "arms": arms,
        "comparison": comparison,
        "probes": probes,
        "figures": figures,
        "curves": {
            "pretrain": _read_metrics(root / "pretrain", "pretrain"),
            "bilevel": _read_metrics(root / "bissl" / "bilevel", "bilevel"),
            "finetune": {arm: _seed_curve(root / arm / "finetune") for arm in arms},
        },
        "timings": dict(parts.timings),
        "fairness": config.compare.fairness,
    }
    results = write_compare_results(run, results)
    if distributed.is_main():
        report_path = write_report(root)
        print(format_compare_table(results))
        print(f"report: {report_path}")
    run.write_summary({"stage": "compare", "results": "results.json", "report": "report.html"})
    return results


def _by_seed(seeds: list[Record]) -> dict[int, Record]:
    """An arm's seed runs by their seed."""
    return {int(cast(int, record["seed"])): record for record in seeds}


def _pretrain_steps(config: Config) -> int:
    """The step count a pretraining run of ``config`` takes (needed for the extra-pretext fairness mode)."""
    if config.pretrain.steps is not None:
        return config.pretrain.steps
    from bissl.train.data_sources import load_pretext_source

    data = load_pretext_source(config)
    return config.pretrain.epochs * max(
        1, len(data) // (config.pretrain.batch_size * distributed.world_size())
    )


def _seed_curve(folder: Path) -> list[Record]:
    """Validation curve of the first seed run of an arm."""
    seeds = sorted((folder / "seeds").glob("seed-*")) if (folder / "seeds").is_dir() else []
    return _read_metrics(seeds[0], "finetune") if seeds else []


def _primary_metric(arms: dict[str, CompareArm]) -> str:
    return "map" if any("test_map" in arm["summary"] for arm in arms.values()) else "top1"


def _alignment_part(
    parts: Parts, config: Config, backbones: dict[str, str]
) -> tuple[dict[str, dict[str, float | None]], dict[str, str]]:
    """k-NN, linear probe and t-SNE of both frozen backbones on the downstream task (skipped when done)."""
    folder = parts.root / "alignment"
    done = parts.done("alignment", folder, config, PART_READS["evaluate"])
    if parts.dry:
        return {}, {}
    if done is None and distributed.is_main():
        from bissl.train.checkpoint_formats import load_backbone_weights
        from bissl.train.data_sources import downstream_data
        from bissl.train.evaluate import alignment

        started = time.perf_counter()
        say("compare: alignment probes and t-SNE")
        run = RunDir(folder, config, resume=True, force=True, anchor=parts.root)
        data, task = downstream_data(config, parts.root)
        channels = data["train"].channels
        models = {arm: load_backbone_weights(path, config, channels) for arm, path in backbones.items()}
        result = alignment(config, models, data, task, folder)
        run.write_summary({"stage": "alignment", **result})
        parts.timings["alignment"] = time.perf_counter() - started
    distributed.barrier()
    done = read_summary(folder) or {}
    figures = {}
    if (folder / "tsne.png").is_file():
        figures["tsne"] = "alignment/tsne.png"
    probes = done.get("probes", {})
    return probes, figures
