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
from typing import Any

from bissl import distributed
from bissl.config import Config, to_dict
from bissl.errors import ConfigError
from bissl.parts import PART_READS, Parts, read_summary, relative_to_run
from bissl.runtime import GracefulStop, RunDir, say

ARMS = ("baseline", "bissl")


def _read_metrics(path: Path, stage: str) -> list[dict[str, Any]]:
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


def _arm_part(parts: Parts, arm: str, config: Config, backbone: str) -> dict[str, Any]:
    """Search then seeds for one arm's backbone; returns the arm's results block."""
    from bissl.train.search import search

    arm_config = dataclasses.replace(config, backbone=backbone)
    summary = parts.run(f"{arm} search + seeds", parts.root / arm / "finetune", arm_config, search)
    found = dict(summary.get("search") or {})
    found["trials"] = [
        _scalars(trial) | dict(trial.get("params") or {}) for trial in found.get("trials") or []
    ]
    seeds = [_scalars(seed) for seed in summary.get("seeds") or []]
    return {"backbone": backbone, "search": found, "seeds": seeds, "summary": summary.get("summary")}


def _scalars(record: dict[str, Any]) -> dict[str, Any]:
    """The flat (number, text, null) entries of a record; nested blocks stay in the part's summary.json."""
    return {k: v for k, v in record.items() if v is None or isinstance(v, int | float | str)}


def _run_parts(parts: Parts, config: Config) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
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
    arms: dict[str, dict[str, Any]] = {}
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
) -> dict[str, Any]:
    """Run both arms, the analyses and the statistics; write results.json and report.html."""
    from bissl.eval.stats import paired_comparison

    stop = stop or GracefulStop()
    root = run.path
    check_compare(config, root)
    parts = Parts(root, stop, "compare")
    arms, backbones = _run_parts(parts, config)
    probes, figures = _alignment_part(parts, config, backbones)
    comparison: dict[str, Any] = {}
    if "baseline" in arms and "bissl" in arms:
        base_seeds = {s["seed"]: s for s in arms["baseline"].get("seeds") or []}
        bissl_seeds = {s["seed"]: s for s in arms["bissl"].get("seeds") or []}
        common = sorted(set(base_seeds) & set(bissl_seeds))
        metrics = sorted({k for s in base_seeds.values() for k in s if k.startswith("test_")})
        for metric in metrics:
            a = [float(base_seeds[i][metric]) for i in common]
            b = [float(bissl_seeds[i][metric]) for i in common]
            if common:
                paired = paired_comparison(a, b)
                comparison[metric] = paired | {"ci95": [paired["ci_low"], paired["ci_high"]]}
    for block in arms.values():
        block["backbone"] = relative_to_run(block["backbone"], root)
    results = {
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
    run.write_json("results.json", results)
    if distributed.is_main():
        from bissl.report import write_report

        report_path = write_report(root)
        print(format_table(results))
        print(f"report: {report_path}")
    run.write_summary({"stage": "compare", "results": "results.json", "report": "report.html"})
    return results


def _pretrain_steps(config: Config) -> int:
    """The step count a pretraining run of ``config`` takes (needed for the extra-pretext fairness mode)."""
    if config.pretrain.steps is not None:
        return config.pretrain.steps
    from bissl.train.data_sources import load_pretext_source

    data = load_pretext_source(config)
    return config.pretrain.epochs * max(
        1, len(data) // (config.pretrain.batch_size * distributed.world_size())
    )


def _seed_curve(folder: Path) -> list[dict[str, Any]]:
    """Validation curve of the first seed run of an arm."""
    seeds = sorted((folder / "seeds").glob("seed-*")) if (folder / "seeds").is_dir() else []
    return _read_metrics(seeds[0], "finetune") if seeds else []


def _primary_metric(arms: dict[str, dict[str, Any]]) -> str:
    for arm in arms.values():
        summary = arm.get("summary") or {}
        if "test_map" in summary:
            return "map"
    return "top1"


def _alignment_part(
    parts: Parts, config: Config, backbones: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
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


def format_table(results: dict[str, Any]) -> str:
    """The short table printed at the end of compare (and shown in the README)."""
    metric = "test_" + results["primary_metric"]
    lines = [
        f"{'arm':<10} {'test ' + results['primary_metric'] + ' (mean ± std)':<26} {'k-NN':>7} {'probe':>7}  lr / wd"
    ]
    for arm in ARMS:
        block = results["arms"].get(arm)
        if block is None:
            continue
        summary = (block.get("summary") or {}).get(metric) or {}
        probe = results["probes"].get(arm, {})
        best = (block.get("search") or {}).get("best") or {}
        mean, std, n = summary.get("mean"), summary.get("std"), summary.get("n")
        cell = f"{mean:.2f} ± {std:.2f} (n={n})" if mean is not None else "n/a"
        knn = probe.get("knn_top1")
        lin = probe.get("probe_top1") if probe.get("probe_top1") is not None else probe.get("probe_map")
        lines.append(
            f"{arm:<10} {cell:<26} {knn if knn is None else f'{knn:.2f}':>7} {lin if lin is None else f'{lin:.2f}':>7}"
            f"  {best.get('lr', float('nan')):.3g} / {best.get('weight_decay', float('nan')):.3g}"
        )
    diff = results["comparison"].get(metric)
    if diff:
        low, high = (_signed(v) for v in diff["ci95"])
        lines.append(
            f"BiSSL − baseline: {diff['mean_difference']:+.2f} (95% CI {low} … {high}, "
            f"paired t p={_p(diff.get('t_pvalue'))}, Wilcoxon p={_p(diff.get('wilcoxon_pvalue'))})"
        )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
