"""``bissl study``: named arms × pipeline seeds from one pretext checkpoint, the evidence behind
docs/evidence.md.

The pretext pretraining runs once. Every arm is a set of config overrides (``study.arms``) run once per
pipeline seed; that seed sets ``seed`` for everything after pretraining (continued pretext training, head
warm-up, BiSSL stage, search and fine-tuning seeds). Each part of an arm (extra pretext steps, warm-up,
BiSSL stage, search + seeds, alignment probes) lives in its own folder and is skipped when its summary exists,
so an interrupted study resumes where it stopped and an arm added later runs only its own parts. After each
arm and seed, results.json (per-seed numbers, paired statistics against the reference arm, wall times) and
report.html are rewritten, so a partial study can be read at any time.
"""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bissl.config import Config, StudyArm, StudyConfig, apply_overrides, config_from_dict, to_dict
from bissl.errors import BisslError, ConfigError
from bissl.experiment import TIMINGS_FILE, Parts, read_summary, read_timings, relative_to_run
from bissl.runtime import GracefulStop, RunDir

RESULTS_FILE = "results.json"
ALIGNMENT_KEYS = ("knn_top1", "probe_top1")
BN_CONTROL = "bn-recalibrated"
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def validate_study(config: Config) -> None:
    """One-line errors for a study section that cannot run: no arms, bad names, impossible combinations."""
    study = config.study
    if not study.arms:
        raise ConfigError("config key 'study.arms' is empty; list the arms to run (see configs/study.yaml)")
    names = [arm.name for arm in study.arms]
    for arm in study.arms:
        if not ARM_NAME.match(arm.name):
            raise ConfigError(
                f"study arm name {arm.name!r} is not a folder name; use letters, digits and . _ + - only"
            )
        if arm.init == "random" and (arm.bilevel or arm.extra_pretext):
            raise ConfigError(
                f"study arm {arm.name!r}: init=random cannot be combined with bilevel or extra_pretext"
            )
        if arm.bilevel and arm.extra_pretext:
            raise ConfigError(f"study arm {arm.name!r}: choose bilevel or extra_pretext, not both")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"study arm names must be unique; repeated: {', '.join(duplicates)}")
    if study.reference not in names:
        raise ConfigError(
            f"config key 'study.reference' is {study.reference!r}, which is not an arm; pick one of {', '.join(names)}"
        )
    if not study.pipeline_seeds or len(set(study.pipeline_seeds)) != len(study.pipeline_seeds):
        raise ConfigError("config key 'study.pipeline_seeds' must list at least one seed, without repeats")
    for arm in study.arms:
        arm_config(config, arm, seed=study.pipeline_seeds[0], pretext="pretext.pt")


def part_config(config: Config) -> Config:
    """The config a part runs with: the study section is dropped, so adding an arm changes no finished part."""
    return dataclasses.replace(config, study=StudyConfig())


def arm_config(config: Config, arm: StudyArm, *, seed: int, pretext: str) -> Config:
    """The arm's resolved config for one pipeline seed (arm overrides applied last, then validated)."""
    data = to_dict(part_config(config))
    data["seed"] = seed
    data["pretext_checkpoint"] = pretext
    try:
        data = apply_overrides(data, list(arm.overrides))
        return config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"study arm {arm.name!r}: {error}") from None


def extra_pretext_config(config: Config, pretext: str) -> Config:
    """Continued pretext training from ``pretext`` for as many steps as the BiSSL stage's lower level takes
    (alternations × lower_steps), with the lower level's optimiser settings and no proximal term."""
    from bissl.train.data_sources import load_pretext_source

    lower = config.bilevel
    steps = lower.alternations * lower.lower_steps
    steps_per_epoch = max(1, len(load_pretext_source(config)) // lower.lower_batch_size)
    pretrain = dataclasses.replace(
        config.pretrain,
        steps=steps,
        batch_size=lower.lower_batch_size,
        lr=lower.lower_lr,
        weight_decay=lower.lower_weight_decay,
        momentum=lower.lower_momentum,
        warmup_epochs=lower.lower_warmup_steps / steps_per_epoch,
        final_lr_ratio=lower.lower_final_lr_ratio,
        clip_grad=lower.clip_grad,
        checkpoint_every=max(1, min(config.pretrain.checkpoint_every, steps)),
        init_checkpoint=pretext,
    )
    return dataclasses.replace(config, pretrain=pretrain)


def _probe_part(parts: Parts, name: str, folder: Path, config: Config, backbone: str | None) -> None:
    """k-NN and linear probe of one frozen backbone (``None``: random initialisation drawn with the seed)."""
    from bissl.train.evaluate import evaluate

    probe_config = dataclasses.replace(
        config, backbone=backbone, eval=dataclasses.replace(config.eval, tsne_samples=0)
    )
    parts.run(name, folder, probe_config, evaluate)


def _pretext_part(parts: Parts, config: Config, root: Path) -> str:
    """The study's one pretext checkpoint: ``pretext_checkpoint`` when given, else pretrained here."""
    if config.pretext_checkpoint is not None:
        if not Path(config.pretext_checkpoint).is_file():
            raise BisslError(
                f"pretext checkpoint '{config.pretext_checkpoint}' does not exist; check pretext_checkpoint=PATH"
            )
        return config.pretext_checkpoint
    from bissl.train.pretrain import pretrain

    parts.run("pretrain", root / "pretrain", part_config(config), pretrain)
    return str(root / "pretrain" / "checkpoints" / "pretext.pt")


def run_arm(parts: Parts, config: Config, arm: StudyArm, seed: int, pretext: str) -> None:
    """Every part of one arm at one pipeline seed, in ``arms/<arm>/seed-<seed>/``."""
    from bissl.train.bilevel_stage import train_bilevel
    from bissl.train.pretrain import pretrain
    from bissl.train.search import search
    from bissl.train.warmup import warmup

    folder = parts.root / "arms" / arm.name / f"seed-{seed}"
    prefix = f"{arm.name}/seed-{seed}"
    resolved = arm_config(config, arm, seed=seed, pretext=pretext)
    backbone: str | None = None if arm.init == "random" else pretext
    if arm.extra_pretext:
        # in a dry pass the config is needed only to check a finished part (its step count may need the data)
        if not parts.dry or read_summary(folder / "extra-pretext") is not None:
            longer = extra_pretext_config(resolved, pretext)
            parts.run(f"{prefix}/extra-pretext", folder / "extra-pretext", longer, pretrain)
        backbone = str(folder / "extra-pretext" / "backbone.pt")
    if arm.bilevel:
        parts.run(f"{prefix}/warmup", folder / "warmup", resolved, warmup)
        head = str(folder / "warmup" / "checkpoints" / "head.pt")
        bilevel = dataclasses.replace(resolved, head_checkpoint=head)
        parts.run(f"{prefix}/bilevel", folder / "bilevel", bilevel, train_bilevel)
        backbone = str(folder / "bilevel" / "lower_backbone.pt")
    tuned = dataclasses.replace(resolved, backbone=backbone)
    parts.run(f"{prefix}/finetune", folder / "finetune", tuned, search)
    _probe_part(parts, f"{prefix}/alignment", folder / "alignment", resolved, backbone)


def run_bn_control(parts: Parts, config: Config, seed: int, pretext: str) -> None:
    """The reference backbone with BatchNorm statistics recalibrated on downstream data by the head warm-up
    (what BiSSL's warm-up does to them), probed frozen; only for a pretrained reference without a BiSSL stage."""
    from bissl.train.warmup import warmup

    reference = _reference_arm(config.study)
    if reference.init != "pretrained" or reference.bilevel:
        return
    resolved = arm_config(config, reference, seed=seed, pretext=pretext)
    source = pretext
    if reference.extra_pretext:
        source = str(parts.root / "arms" / reference.name / f"seed-{seed}" / "extra-pretext")
        source = str(Path(source) / "checkpoints" / "pretext.pt")
    warm = dataclasses.replace(resolved, pretext_checkpoint=source)
    folder = parts.root / "controls" / BN_CONTROL / f"seed-{seed}"
    prefix = f"{BN_CONTROL}/seed-{seed}"
    parts.run(f"{prefix}/warmup", folder / "warmup", warm, warmup)
    head = str(folder / "warmup" / "checkpoints" / "head.pt")
    _probe_part(parts, f"{prefix}/alignment", folder / "alignment", resolved, head)


def _reference_arm(study: StudyConfig) -> StudyArm:
    return next(arm for arm in study.arms if arm.name == study.reference)


def check_study(config: Config, out: Path) -> None:
    """Refuse, before anything is written, a study with a bad study section or whose finished parts in ``out``
    were run under other values of the keys they read (naming the first such part and key)."""
    validate_study(config)
    parts = Parts(out, GracefulStop(), "study", dry=True)
    pretext = _pretext_part(parts, config, out)
    for seed in config.study.pipeline_seeds:
        for arm in config.study.arms:
            run_arm(parts, config, arm, seed, pretext)
            if arm.name == config.study.reference and config.study.bn_control:
                run_bn_control(parts, config, seed, pretext)


def study(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> dict[str, Any]:
    """Run every arm at every pipeline seed (seed-major, so finished seeds pair across arms), the BatchNorm
    control, the statistics; rewrite results.json and report.html after each arm and seed."""
    stop = stop or GracefulStop()
    root = run.path
    check_study(config, root)
    parts = Parts(root, stop, "study")
    pretext = _pretext_part(parts, config, root)
    results = collect_results(config, root, pretext)
    for seed in config.study.pipeline_seeds:
        for arm in config.study.arms:
            run_arm(parts, config, arm, seed, pretext)
            if arm.name == config.study.reference and config.study.bn_control:
                run_bn_control(parts, config, seed, pretext)
            results = _publish(config, run, pretext)
            stop.check()
    results = _publish(config, run, pretext)
    from bissl.study_report import format_table

    print(format_table(results))
    print(f"report: {root / 'report.html'}")
    run.write_summary({"stage": "study", "results": RESULTS_FILE, "complete": results["complete"]})
    return results


def _publish(config: Config, run: RunDir, pretext: str) -> dict[str, Any]:
    from bissl.study_report import write_study_report

    results = collect_results(config, run.path, pretext)
    run.write_json(RESULTS_FILE, results)
    write_study_report(run.path)
    return results


def _seed_block(folder: Path, metric: str) -> dict[str, Any] | None:
    """One arm's numbers at one pipeline seed, or None while its fine-tuning has not finished."""
    finetune = read_summary(folder / "finetune")
    if finetune is None:
        return None
    values = [float(seed[metric]) for seed in finetune.get("seeds") or [] if metric in seed]
    if not values:
        return None
    best = (finetune.get("search") or {}).get("best") or {}
    block: dict[str, Any] = {
        metric: sum(values) / len(values),
        "finetune_values": values,
        "finetune_seeds": [int(seed["seed"]) for seed in finetune.get("seeds") or []],
        "lr": best.get("lr"),
        "weight_decay": best.get("weight_decay"),
    }
    probes = read_summary(folder / "alignment") or {}
    for key in ALIGNMENT_KEYS:
        block[key] = probes.get(key)
    return block


def _summaries(per_seed: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    from bissl.eval.stats import summarize

    summary: dict[str, Any] = {}
    for key in keys:
        values = [block[key] for block in per_seed.values() if isinstance(block.get(key), int | float)]
        if values and all(math.isfinite(v) for v in values):
            summary[key] = summarize(values)
    return summary


def _arm_seconds(timings: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        name[len(prefix) + 1 :]: value for name, value in timings.items() if name.startswith(prefix + "/")
    }


def collect_results(config: Config, root: Path, pretext: str) -> dict[str, Any]:
    """results.json from what has finished in ``root``: per-arm per-seed numbers, summaries over pipeline
    seeds, paired comparisons against the reference arm (Holm-adjusted over arms), the BN control, wall times."""
    from bissl.eval.stats import compare_to_reference

    study_config = config.study
    metric = "test_top1"
    timings = read_timings(root / TIMINGS_FILE)
    arms: dict[str, Any] = {}
    values: dict[str, dict[str, dict[int, float]]] = {key: {} for key in (metric, *ALIGNMENT_KEYS)}
    for arm in study_config.arms:
        per_seed: dict[str, Any] = {}
        for seed in study_config.pipeline_seeds:
            block = _seed_block(root / "arms" / arm.name / f"seed-{seed}", metric)
            if block is None:
                continue
            block["seconds"] = _arm_seconds(timings, f"{arm.name}/seed-{seed}")
            block["total_seconds"] = sum(block["seconds"].values())
            per_seed[str(seed)] = block
            for key in values:
                if isinstance(block.get(key), int | float):
                    values[key].setdefault(arm.name, {})[seed] = float(block[key])
        totals = [block["total_seconds"] for block in per_seed.values()]
        arms[arm.name] = {
            "spec": dataclasses.asdict(arm),
            "seeds": per_seed,
            "summary": _summaries(per_seed, (metric, *ALIGNMENT_KEYS)),
            "seconds_per_seed": sum(totals) / len(totals) if totals else None,
            "complete": len(per_seed) == len(study_config.pipeline_seeds),
        }
    controls: dict[str, Any] = {}
    bn_seeds: dict[str, Any] = {}
    for seed in study_config.pipeline_seeds:
        probes = read_summary(root / "controls" / BN_CONTROL / f"seed-{seed}" / "alignment")
        if probes is not None:
            bn_seeds[str(seed)] = {key: probes.get(key) for key in ALIGNMENT_KEYS}
            bn_seeds[str(seed)]["seconds"] = _arm_seconds(timings, f"{BN_CONTROL}/seed-{seed}")
            for key in ALIGNMENT_KEYS:
                if isinstance(probes.get(key), int | float):
                    values[key].setdefault(BN_CONTROL, {})[seed] = float(probes[key])
    if bn_seeds:
        controls[BN_CONTROL] = {
            "of": study_config.reference,
            "seeds": bn_seeds,
            "summary": _summaries(bn_seeds, ALIGNMENT_KEYS),
        }
    comparison = {
        key: compare_to_reference(
            {name: seeds for name, seeds in by_arm.items() if key != metric or name != BN_CONTROL},
            study_config.reference,
        )
        for key, by_arm in values.items()
    }
    matched = [a.name for a in study_config.arms if a.extra_pretext and not a.bilevel]
    versus_matched: dict[str, Any] = {}
    if matched:
        bilevel_arms = {a.name for a in study_config.arms if a.bilevel}
        subset = {
            name: seeds for name, seeds in values[metric].items() if name in bilevel_arms | {matched[0]}
        }
        versus_matched = {"reference": matched[0], metric: compare_to_reference(subset, matched[0])}
    expected = len(study_config.arms) * len(study_config.pipeline_seeds)
    finished = sum(len(arm["seeds"]) for arm in arms.values())
    return {
        "title": f"BiSSL evidence study: {config.data.pretext} -> {config.data.downstream}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "primary_metric": metric,
        "reference": study_config.reference,
        "pipeline_seeds": list(study_config.pipeline_seeds),
        "finetune_seeds": config.search.seeds,
        "pretext_checkpoint": relative_to_run(pretext, root),
        "arms": arms,
        "controls": controls,
        "comparison": comparison,
        "versus_matched": versus_matched,
        "timings": {
            "pretrain": timings.get("pretrain"),
            "parts": timings,
            "total_seconds": sum(timings.values()),
        },
        "finished_runs": finished,
        "expected_runs": expected,
        "complete": finished == expected,
        "config": to_dict(config),
    }
