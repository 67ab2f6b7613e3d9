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
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, cast

from bissl.checkpoint import require_file
from bissl.config import Config, StudyArm, StudyConfig, apply_overrides, config_from_dict, to_dict
from bissl.errors import ConfigError
from bissl.eval.stats import compare_to_reference, holm, paired_comparison, summarize
from bissl.models import uses_batchnorm
from bissl.parts import TIMINGS_FILE, Parts, read_summary, read_timings, relative_to_run
from bissl.report.schema import (
    RESULTS_FILE,
    Hypothesis,
    PrimaryHypotheses,
    ReferenceDifference,
    SeedStatistics,
    StudyArmResults,
    StudyArmSpec,
    StudyControl,
    StudyResults,
    StudySeed,
    VersusMatched,
    seed_value,
    write_study_results,
)
from bissl.report.study import format_table, write_study_report
from bissl.runtime import GracefulStop, RunDir

# The training stages (bissl.train.*) are imported inside the functions that run their parts: they load the
# training stack (torchvision models, kornia augmentations, optuna), which a study refused by its checks, or
# one whose parts have all finished, does not need.

METRIC: Final = "test_top1"
SHARED_METRIC: Final = "test_top1_shared"
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
        if arm.seeds is not None and not 1 <= arm.seeds <= len(study.pipeline_seeds):
            raise ConfigError(
                f"study arm {arm.name!r}: seeds must be between 1 and the {len(study.pipeline_seeds)} pipeline "
                f"seeds, got {arm.seeds}"
            )
        if not arm.own_search and (arm.name == study.reference or not study.shared_hyperparameters):
            raise ConfigError(
                f"study arm {arm.name!r}: own_search=false needs study.shared_hyperparameters=true and an arm "
                "other than the reference (it is fine-tuned at the reference's setting)"
            )
    reference = _reference_arm(study)
    if reference.seeds is not None and reference.seeds < len(study.pipeline_seeds):
        raise ConfigError(
            f"study arm {reference.name!r} is the reference and must run at every pipeline seed"
        )
    if study.primary_arm is not None:
        primary = next((arm for arm in study.arms if arm.name == study.primary_arm), None)
        if primary is None or primary.name == study.reference:
            raise ConfigError(
                f"config key 'study.primary_arm' is {study.primary_arm!r}; name an arm other than the reference"
            )
        if primary.seeds is not None and primary.seeds < len(study.pipeline_seeds):
            raise ConfigError(
                f"study arm {primary.name!r} is the primary arm and must run at every pipeline seed"
            )
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
        optimizer=lower.lower_optimizer,
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
        require_file(config.pretext_checkpoint, "pretext checkpoint", "check pretext_checkpoint=PATH")
        return config.pretext_checkpoint
    from bissl.train.pretrain import pretrain

    parts.run("pretrain", root / "pretrain", part_config(config), pretrain)
    return str(root / "pretrain" / "checkpoints" / "pretext.pt")


def run_arm(parts: Parts, config: Config, arm: StudyArm, seed: int, pretext: str) -> None:
    """Every part of one arm at one pipeline seed, in ``arms/<arm>/seed-<seed>/``."""
    from bissl.train.bilevel_stage import train_bilevel
    from bissl.train.pretrain import pretrain
    from bissl.train.search import search, seeds_at_setting
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
        else:
            parts.pending(f"{prefix}/extra-pretext", folder / "extra-pretext")
        backbone = str(folder / "extra-pretext" / "backbone.pt")
    if arm.bilevel:
        parts.run(f"{prefix}/warmup", folder / "warmup", resolved, warmup)
        head = str(folder / "warmup" / "checkpoints" / "head.pt")
        bilevel = dataclasses.replace(resolved, head_checkpoint=head)
        parts.run(f"{prefix}/bilevel", folder / "bilevel", bilevel, train_bilevel)
        backbone = str(folder / "bilevel" / "lower_backbone.pt")
    tuned = dataclasses.replace(resolved, backbone=backbone)
    reference = config.study.reference
    if arm.own_search or arm.name == reference:
        parts.run(f"{prefix}/finetune", folder / "finetune", tuned, search)
    if config.study.shared_hyperparameters and arm.name != reference:
        setting = reference_setting(parts.root, reference, seed)
        name = f"{prefix}/finetune-shared"
        if setting is None:
            parts.pending(name, folder / "finetune-shared")
        else:
            finetune = dataclasses.replace(tuned.finetune, lr=setting[0], weight_decay=setting[1])
            shared = dataclasses.replace(tuned, finetune=finetune)
            parts.run(name, folder / "finetune-shared", shared, seeds_at_setting)
    _probe_part(parts, f"{prefix}/alignment", folder / "alignment", resolved, backbone)


def reference_setting(root: Path, reference: str, seed: int) -> tuple[float, float] | None:
    """The (lr, weight decay) the reference arm's search chose at ``seed``, or None before it finished."""
    return _chosen_setting(read_summary(root / "arms" / reference / f"seed-{seed}" / "finetune"))


def arm_seeds(study: StudyConfig, arm: StudyArm) -> list[int]:
    """The pipeline seeds an arm runs at: all of them, or the first ``arm.seeds``."""
    seeds = list(study.pipeline_seeds)
    return seeds if arm.seeds is None else seeds[: arm.seeds]


def arm_order(study: StudyConfig) -> list[StudyArm]:
    """The arms in the order they run at each pipeline seed: the reference first (the others may need its
    chosen setting), then the rest in table order."""
    reference = _reference_arm(study)
    return [reference, *(arm for arm in study.arms if arm.name != reference.name)]


def run_bn_control(parts: Parts, config: Config, seed: int, pretext: str) -> None:
    """The reference backbone with BatchNorm statistics recalibrated on downstream data by the head warm-up
    (what BiSSL's warm-up does to them), probed frozen; only for a pretrained reference without a BiSSL stage,
    and only for a backbone with BatchNorm (a ViT comes out of the warm-up unchanged: the control would repeat
    the reference's own probe)."""
    from bissl.train.warmup import warmup

    reference = _reference_arm(config.study)
    if reference.init != "pretrained" or reference.bilevel:
        return
    resolved = arm_config(config, reference, seed=seed, pretext=pretext)
    if not uses_batchnorm(resolved.model.backbone):
        return
    source = pretext
    if reference.extra_pretext:
        extra = parts.root / "arms" / reference.name / f"seed-{seed}" / "extra-pretext"
        source = str(extra / "checkpoints" / "pretext.pt")
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
    from bissl.train.data_sources import check_downstream

    check_downstream(config)  # a bad downstream set is refused before the pretraining, not after it
    walk_parts(Parts(out, GracefulStop(), "study", dry=True), config)


def walk_parts(parts: Parts, config: Config, after_arm: Callable[[str], None] | None = None) -> str:
    """Every part of the study in run order, through ``parts`` (a dry walk runs nothing); ``after_arm`` is
    called with the pretext checkpoint after each arm at each seed. Returns the pretext checkpoint."""
    pretext = _pretext_part(parts, config, parts.root)
    for seed in config.study.pipeline_seeds:
        for arm in arm_order(config.study):
            if seed in arm_seeds(config.study, arm):
                run_arm(parts, config, arm, seed, pretext)
                if arm.name == config.study.reference and config.study.bn_control:
                    run_bn_control(parts, config, seed, pretext)
                if after_arm is not None:
                    after_arm(pretext)
    return pretext


def study(
    config: Config, run: RunDir, *, stop: GracefulStop | None = None, resume: bool = True
) -> StudyResults:
    """Run every arm at every pipeline seed (seed-major, so finished seeds pair across arms), the BatchNorm
    control, the statistics; rewrite results.json and report.html after each arm and seed."""
    stop = stop or GracefulStop()
    validate_study(config)  # `bissl study` has already run check_study; finished parts are checked as met

    published: list[StudyResults] = []

    def publish(pretext: str) -> None:
        published[:] = [_publish(config, run, pretext)]
        stop.check()

    walk_parts(Parts(run.path, stop, "study"), config, after_arm=publish)
    root = run.path
    results = published[-1]  # the reference arm runs at every seed, so there is at least one
    print(format_table(results))
    print(f"report: {root / 'report.html'}")
    run.write_summary({"stage": "study", "results": RESULTS_FILE, "complete": results["complete"]})
    return results


def estimate_seconds(name: str, timings: dict[str, float]) -> float | None:
    """A part's expected wall time from finished parts: the mean of the same arm's same part at other
    pipeline seeds, else of the same part of every arm; None when no such part has finished."""
    pieces = name.split("/")
    if len(pieces) != 3:
        return timings.get(name)
    arm, _, part = pieces
    for same in (
        lambda other: other[0] == arm and other[2] == part,
        lambda other: other[2] == part,
    ):
        values = [
            seconds for key, seconds in timings.items() if len(key.split("/")) == 3 and same(key.split("/"))
        ]
        if values:
            return sum(values) / len(values)
    return None


def plan_study(config: Config, root: Path) -> list[str]:
    """``bissl study --plan``: the parts still to run, each with its time estimated from the timings of
    finished parts, and their total; nothing is run and nothing is written."""
    validate_study(config)
    parts = Parts(root, GracefulStop(), "study", dry=True)
    walk_parts(parts, config)
    todo = [name for name, done in parts.rows if not done]
    lines = [f"{len(parts.rows) - len(todo)} of {len(parts.rows)} parts finished; to run:"]
    known = 0.0
    unknown = 0
    for name in todo:
        seconds = estimate_seconds(name, parts.timings)
        if seconds is None:
            unknown += 1
        else:
            known += seconds
        lines.append(f"  {name:<56} {'no estimate' if seconds is None else _minutes(seconds)}")
    total = f"about {_minutes(known)}"
    if unknown:
        total += f" plus {unknown} part(s) of a kind that has not run yet"
    lines.append(f"estimated time of the parts to run: {total} (from the finished parts' wall times)")
    return lines


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _publish(config: Config, run: RunDir, pretext: str) -> StudyResults:
    results = write_study_results(run, collect_results(config, run.path, pretext))
    write_study_report(run.path, results)
    return results


def _seed_block(folder: Path) -> StudySeed | None:
    """One arm's numbers at one pipeline seed: ``test_top1`` from its own search's seeds, ``test_top1_shared``
    from the seeds at the reference's setting; None while neither has finished."""
    block: StudySeed = {}
    finetune = read_summary(folder / "finetune")
    values = _seed_values(finetune, METRIC)
    if finetune is not None and values:
        best = _best(finetune)
        block["test_top1"] = sum(values) / len(values)
        block["finetune_values"] = list(values)
        block["finetune_seeds"] = [int(seed["seed"]) for seed in finetune.get("seeds") or []]
        block["lr"] = best.get("lr")
        block["weight_decay"] = best.get("weight_decay")
    shared_values = _seed_values(read_summary(folder / "finetune-shared"), METRIC)
    if shared_values:
        block["test_top1_shared"] = sum(shared_values) / len(shared_values)
        block["shared_values"] = list(shared_values)
    if not block:
        return None
    _add_probes(block, read_summary(folder / "alignment") or {})
    return block


def _add_probes(block: StudySeed, probes: dict[str, Any]) -> None:
    """The frozen backbone's k-NN and linear-probe top-1 (null when not measured)."""
    block["knn_top1"] = probes.get("knn_top1")
    block["probe_top1"] = probes.get("probe_top1")


def _best(summary: dict[str, Any]) -> dict[str, Any]:
    """The setting a search part chose (``search.best`` of its summary; {} when it has none)."""
    search = summary.get("search")
    best = search.get("best") if isinstance(search, dict) else None
    return best if isinstance(best, dict) else {}


def _chosen_setting(summary: dict[str, Any] | None) -> tuple[float, float] | None:
    best = _best(summary) if summary is not None else {}
    if "lr" not in best or "weight_decay" not in best:
        return None
    return float(best["lr"]), float(best["weight_decay"])


def _seed_values(summary: dict[str, Any] | None, metric: str) -> list[float]:
    seeds = summary.get("seeds") if summary is not None else None
    return [float(seed[metric]) for seed in seeds or [] if metric in seed]


def _summaries(per_seed: dict[str, StudySeed], keys: tuple[str, ...]) -> dict[str, SeedStatistics]:
    summary: dict[str, SeedStatistics] = {}
    for key in keys:
        values = [value for block in per_seed.values() if (value := seed_value(block, key)) is not None]
        if values and all(math.isfinite(v) for v in values):
            summary[key] = cast(SeedStatistics, summarize(values))
    return summary


def _arm_seconds(timings: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        name[len(prefix) + 1 :]: value for name, value in timings.items() if name.startswith(prefix + "/")
    }


def primary_hypotheses(
    by_arm: dict[str, dict[int, float]], arm: str, reference: str, matched: list[str], statistic: str
) -> PrimaryHypotheses:
    """H1 (``arm`` beats ``reference``) and H2 (``arm`` beats the matched-compute arm): paired over pipeline
    seeds on ``statistic``, one-sided paired t-tests, Holm-adjusted over the two hypotheses."""
    tests: dict[str, Hypothesis] = {}
    for name, against in (("H1", reference), ("H2", matched[0] if matched else None)):
        if against is None:
            continue
        own, base = by_arm.get(arm, {}), by_arm.get(against, {})
        common = sorted(set(own) & set(base))
        if not common:
            continue
        result = paired_comparison([base[s] for s in common], [own[s] for s in common])
        tests[name] = cast(Hypothesis, result | {"arm": arm, "against": against, "seeds": common})
    names = list(tests)
    for name, value in zip(names, holm([tests[n]["t_pvalue_greater"] for n in names]), strict=True):
        tests[name]["t_pvalue_greater_holm"] = value
    return {"arm": arm, "statistic": statistic, "alpha": 0.05, "tests": tests}


def _compared(per_seed: dict[str, dict[int, float]], reference: str) -> dict[str, ReferenceDifference]:
    """``compare_to_reference``: every arm in ``per_seed`` against ``reference``, Holm-adjusted over them."""
    return cast("dict[str, ReferenceDifference]", compare_to_reference(per_seed, reference))


def collect_results(config: Config, root: Path, pretext: str) -> StudyResults:
    """results.json from what has finished in ``root``: per-arm per-seed numbers, summaries over pipeline
    seeds, paired comparisons against the reference arm (Holm-adjusted over arms), the BN control, wall times."""
    study_config = config.study
    timings = read_timings(root / TIMINGS_FILE)
    shared_mode = study_config.shared_hyperparameters
    arms: dict[str, StudyArmResults] = {}
    keys = (METRIC, SHARED_METRIC, *ALIGNMENT_KEYS) if shared_mode else (METRIC, *ALIGNMENT_KEYS)
    values: dict[str, dict[str, dict[int, float]]] = {key: {} for key in keys}
    for arm in study_config.arms:
        per_seed: dict[str, StudySeed] = {}
        for seed in arm_seeds(study_config, arm):
            block = _seed_block(root / "arms" / arm.name / f"seed-{seed}")
            if block is None:
                continue
            if shared_mode and arm.name == study_config.reference and METRIC in block:
                block[SHARED_METRIC] = block[METRIC]  # the reference's own setting is the shared one
            block["seconds"] = _arm_seconds(timings, f"{arm.name}/seed-{seed}")
            block["total_seconds"] = sum(block["seconds"].values())
            per_seed[str(seed)] = block
            for key in values:
                value = seed_value(block, key)
                if value is not None:
                    values[key].setdefault(arm.name, {})[seed] = value
        totals = [block.get("total_seconds", 0.0) for block in per_seed.values()]
        arms[arm.name] = {
            "spec": cast(StudyArmSpec, dataclasses.asdict(arm)),
            "seeds": per_seed,
            "summary": _summaries(per_seed, keys),
            "seconds_per_seed": sum(totals) / len(totals) if totals else None,
            "complete": len(per_seed) == len(arm_seeds(study_config, arm)),
        }
    controls: dict[str, StudyControl] = {}
    bn_seeds: dict[str, StudySeed] = {}
    for seed in study_config.pipeline_seeds:
        probes = read_summary(root / "controls" / BN_CONTROL / f"seed-{seed}" / "alignment")
        if probes is not None:
            control: StudySeed = {}
            _add_probes(control, probes)
            control["seconds"] = _arm_seconds(timings, f"{BN_CONTROL}/seed-{seed}")
            bn_seeds[str(seed)] = control
            for key in ALIGNMENT_KEYS:
                value = seed_value(control, key)
                if value is not None:
                    values[key].setdefault(BN_CONTROL, {})[seed] = value
    if bn_seeds:
        controls[BN_CONTROL] = {
            "of": study_config.reference,
            "seeds": bn_seeds,
            "summary": _summaries(bn_seeds, ALIGNMENT_KEYS),
        }
    primary_arm = study_config.primary_arm
    statistic = SHARED_METRIC if shared_mode else METRIC
    comparison = {
        key: _compared(
            {
                name: seeds
                for name, seeds in by_arm.items()
                if (key not in (METRIC, SHARED_METRIC) or name != BN_CONTROL)
                and (key != statistic or name != primary_arm)  # the primary comparison is H1, not secondary
            },
            study_config.reference,
        )
        for key, by_arm in values.items()
    }
    matched = [a.name for a in study_config.arms if a.extra_pretext and not a.bilevel]
    versus_matched = cast(VersusMatched, {})  # written as {} without a matched-compute arm
    if matched:
        bilevel_arms = {a.name for a in study_config.arms if a.bilevel}
        subset = {
            name: seeds for name, seeds in values[METRIC].items() if name in bilevel_arms | {matched[0]}
        }
        versus_matched = {"reference": matched[0], "test_top1": _compared(subset, matched[0])}
    primary = (
        primary_hypotheses(values[statistic], primary_arm, study_config.reference, matched, statistic)
        if primary_arm is not None
        else cast(PrimaryHypotheses, {})  # written as {} without a primary arm
    )
    expected = sum(len(arm_seeds(study_config, arm)) for arm in study_config.arms)
    finished = sum(len(arm["seeds"]) for arm in arms.values())
    return {
        "title": f"BiSSL evidence study: {config.data.pretext} -> {config.data.downstream}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "primary_metric": METRIC,
        "reference": study_config.reference,
        "pipeline_seeds": list(study_config.pipeline_seeds),
        "finetune_seeds": config.search.seeds,
        "pretext_checkpoint": relative_to_run(pretext, root),
        "arms": arms,
        "controls": controls,
        "comparison": comparison,
        "primary": primary,
        "shared_hyperparameters": shared_mode,
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
