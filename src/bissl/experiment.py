"""``bissl compare``: the conventional pipeline and BiSSL side by side from one pretext checkpoint.

Parts (each skipped when its output exists, so an interrupted comparison resumes where it stopped):
pretrain → baseline search → baseline seeds; warm-up → bilevel → BiSSL search → BiSSL seeds;
alignment probes and t-SNE of both backbones; statistics; results.json and report.html.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bissl import distributed
from bissl.config import Config, to_dict
from bissl.errors import BisslError, ConfigError
from bissl.runtime import PATH_KEYS, RELATIVE_PATHS, GracefulStop, RunDir, StopRequested, say

ARMS = ("baseline", "bissl")


TIMINGS_FILE = "timings.json"
COMMON_KEYS = ("seed", "device", "precision", "channels_last", "max_nonfinite")
PART_READS: dict[str, tuple[str, ...]] = {
    "pretrain": (*COMMON_KEYS, "data", "model", "pretext", "augment", "pretrain", "logging"),
    "warmup": (
        *COMMON_KEYS,
        "pretext_checkpoint",
        "data",
        "model",
        "pretext",
        "augment",
        "warmup",
        "logging",
        "bilevel.upper_lr",
        "bilevel.upper_weight_decay",
    ),
    "train_bilevel": (
        *COMMON_KEYS,
        "hvp_precision",
        "pretext_checkpoint",
        "head_checkpoint",
        "data",
        "model",
        "pretext",
        "augment",
        "pretrain",
        "warmup",
        "bilevel",
        "logging",
    ),
    "search": (
        *COMMON_KEYS,
        "backbone",
        "data",
        "model",
        "pretext.method",
        "augment",
        "finetune",
        "search",
        "logging",
    ),
    "evaluate": (*COMMON_KEYS, "backbone", "data", "model", "pretext.method", "augment", "eval", "logging"),
}
PART_READS["seeds_at_setting"] = PART_READS["search"]
"""The config sections and keys each part's stage reads (by the stage function's name): a part is done when its
summary was written under the same values of these; a change elsewhere leaves it valid. A stage not listed
compares every key."""


def read_summary(path: Path) -> dict[str, Any] | None:
    """A part's summary.json, or None when the part has not finished; an unreadable or truncated file counts
    as not finished (the part runs again and rewrites it)."""
    file = path / "summary.json"
    if not file.is_file():
        return None
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        summary = None
    if not isinstance(summary, dict):
        if file not in _UNREADABLE:
            _UNREADABLE.add(file)
            say(f"{file} is unreadable; its part runs again")
        return None
    return dict(summary)


_UNREADABLE: set[Path] = set()


def read_timings(file: Path) -> dict[str, float]:
    """timings.json (part name -> seconds); an unreadable file counts as empty."""
    try:
        timings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(timings, dict):
        return {}
    return {str(k): float(v) for k, v in timings.items() if isinstance(v, int | float)}


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data))


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


def config_difference(stored: Any, current: Any, default: Any, prefix: str = "") -> str | None:
    """The first dotted key where a part's stored config differs from ``current`` (None: the same). A key that
    ``stored`` lacks counts as equal when ``current`` holds its default there: keys added to the config since
    the part ran leave the behaviour of their defaults unchanged, so finished parts stay valid across such
    additions."""
    if isinstance(stored, dict) and isinstance(current, dict):
        defaults = default if isinstance(default, dict) else {}
        for key, value in current.items():
            if key in stored:
                found = config_difference(stored[key], value, defaults.get(key), f"{prefix}{key}.")
                if found is not None:
                    return found
            elif value != defaults.get(key, _MISSING):
                return prefix + key
        for key in stored:
            if key not in current:
                return prefix + key
        return None
    return None if stored == current else prefix.rstrip(".")


def same_config(stored: Any, current: Any, default: Any) -> bool:
    """Whether a part's stored config is ``current`` (see ``config_difference``)."""
    return config_difference(stored, current, default) is None


_MISSING = object()


def _select(data: Any, reads: tuple[str, ...] | None) -> Any:
    """The sections and dotted keys of a config dict that ``reads`` names (all of it for None)."""
    if reads is None or not isinstance(data, dict):
        return data
    selected: dict[str, Any] = {}
    for key in reads:
        head, _, rest = key.partition(".")
        if head not in data:
            continue
        if not rest:
            selected[head] = data[head]
        elif isinstance(data[head], dict) and rest in data[head]:
            selected.setdefault(head, {})[rest] = data[head][rest]
    return selected


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _replace_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, last = dotted.split(".")
    for part in sections:
        data = data[part]
    data[last] = value


RUN_FOLDER = "<run folder>"


def _location(value: str, base: Path, root: Path) -> str:
    """A path of a config as its place in the run folder (``<run folder>/...``) when it lies inside ``root``,
    else as an absolute path; ``base`` is the folder a relative path is relative to."""
    target = (base / value).resolve() if not Path(value).is_absolute() else Path(value).resolve()
    try:
        return f"{RUN_FOLDER}/{target.relative_to(root).as_posix()}"
    except ValueError:
        return str(target)


def _located(data: Any, base: Path, root: Path, current: Any = None) -> Any:
    """A copy of a config dict with its path values as ``_location`` gives them. With ``current`` (the located
    config of this run), a stored absolute path outside ``root`` that ends with the place ``current`` names
    inside the run folder is that place: a run folder moved after an older run stored absolute paths."""
    if not isinstance(data, dict):
        return data
    data = _plain(data)
    for key in PATH_KEYS:
        value = _lookup(data, key)
        if not isinstance(value, str) or not value:
            continue
        located = _location(value, base, root)
        wanted = _lookup(current, key) if current is not None else None
        if (
            isinstance(wanted, str)
            and wanted.startswith(RUN_FOLDER + "/")
            and not located.startswith(RUN_FOLDER + "/")
        ):
            inside = Path(wanted[len(RUN_FOLDER) + 1 :]).parts
            if Path(located).parts[-len(inside) :] == inside:
                located = wanted
        _replace_key(data, key, located)
    return data


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:79] + "…"


class Parts:
    """Runs each named part of a ``compare`` or ``study`` once in its folder, records its wall time (a stopped
    part's too), and skips it when its summary exists for the same values of the keys its stage reads (a
    summary written under other values is refused, naming the key: the results would mix settings). Paths in
    part summaries are relative to the part's folder, so a moved run folder keeps its finished parts.

    ``dry``: only check the finished parts (``run`` returns their summaries, or {} for a part still to run)
    and write nothing, so that a refused command leaves the folder as it was."""

    def __init__(self, root: Path, stop: GracefulStop, label: str, *, dry: bool = False) -> None:
        self.root = root
        self.stop = stop
        self.label = label
        self.dry = dry
        self.timings_file = root / TIMINGS_FILE
        self.timings: dict[str, float] = read_timings(self.timings_file)

    def run(self, name: str, folder: Path, config: Config, stage: Callable[..., Any]) -> dict[str, Any]:
        reads = PART_READS.get(getattr(stage, "__name__", ""))
        done = self.done(name, folder, config, reads)
        if done is not None:
            if not self.dry:
                say(f"{self.label}: {name} already done, skipped")
            return done
        if self.dry:
            return {}
        say(f"{self.label}: {name}")
        started = time.perf_counter()
        run = RunDir(folder, config, resume=True, force=True, anchor=self.root)
        try:
            stage(config, run, stop=self.stop, resume=True)
        except StopRequested:
            self.record(name, time.perf_counter() - started)  # checkpointed work, resumed by the next run
            raise
        self.record(name, time.perf_counter() - started)
        return read_summary(folder) or {}

    def done(
        self, name: str, folder: Path, config: Config, reads: tuple[str, ...] | None = None
    ) -> dict[str, Any] | None:
        """The part's summary when it has finished under ``config`` (compared on ``reads``, every key when
        None); None when it still has to run."""
        summary = read_summary(folder)
        if summary is None or not isinstance(summary.get("config"), dict):
            return None
        root = self.root.resolve()
        current = _located(_plain(to_dict(config)), Path.cwd(), root)
        base = folder.resolve() if summary.get(RELATIVE_PATHS) else Path.cwd()
        stored = _located(summary.get("config"), base, root, current)
        key = config_difference(
            _select(stored, reads), _select(current, reads), _select(_plain(to_dict(Config())), reads)
        )
        if key is not None:
            there, here = _lookup(stored, key), _lookup(current, key)
            raise ConfigError(
                f"{self.label} part '{name}' in {folder} was run with another config ({key}: {_shown(there)} "
                f"there, {_shown(here)} now); restore it, or remove that folder (or use another --out) to run "
                "it again"
            )
        return summary

    def pending(self, name: str, folder: Path) -> None:
        """A part that cannot be set up yet because a part it reads from has not finished (nothing to check
        in ``dry`` mode)."""
        if self.dry:
            return
        raise BisslError(
            f"{self.label} part '{name}' in {folder} needs the result of a part that has not finished; "
            "rerun the same command"
        )

    def record(self, name: str, seconds: float) -> None:
        if self.dry:
            return
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        if not distributed.is_main():
            return
        temporary = self.timings_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.timings, indent=2))
        temporary.replace(self.timings_file)


def relative_to_run(path: str | Path, root: Path) -> str:
    """``path`` relative to the run folder ``root`` when it lies inside it (as results.json stores it), else
    as given."""
    target = Path(path).resolve()
    try:
        return target.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


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
