"""How noisy is model selection? The baseline alone (the pretext checkpoint fine-tuned directly), searched
and fine-tuned under each selection rule at several pipeline seeds: the spread over seeds of the chosen
setting's test accuracy is the noise that each study arm carries into its paired differences.

Rules: ``holdout`` scores a trial on the validation split alone (the paper's protocol); ``folds-K`` by
stratified K-fold cross-validation over the labelled pool (``search.folds=K``). Everything else is the
study config's search (trials, ranges, epochs, fine-tuning seeds). Each (rule, seed) is one ``bissl search``
run in ``OUT/RULE/seed-S``; a finished one is read back, an interrupted one resumes, so the script can be
stopped and rerun. Prints one table and writes ``OUT/selection.json``.

    python benchmarks/selection_noise.py --checkpoint RUN/pretrain/checkpoints/pretext.pt \\
        --out runs/selection --seeds 1000 1001 1002 1003 1004 1005 --rules holdout folds-5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from bissl.config import load_config
from bissl.runtime import GracefulStop, RunDir
from bissl.train.search import search


def folds_of(rule: str) -> int:
    if rule == "holdout":
        return 1
    if rule.startswith("folds-") and rule[6:].isdigit() and int(rule[6:]) >= 2:
        return int(rule[6:])
    raise SystemExit(f"unknown rule {rule!r}: use holdout or folds-K (K >= 2)")


def run_one(config_name: str, checkpoint: str, rule: str, seed: int, out: Path) -> dict[str, Any]:
    folder = out / rule / f"seed-{seed}"
    summary_file = folder / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        return _row(summary, float(summary.get("seconds", math.nan)))
    overrides = [f"seed={seed}", f"backbone={checkpoint}", f"search.folds={folds_of(rule)}"]
    config = load_config(config_name, overrides)
    started = time.perf_counter()
    summary = search(config, RunDir(folder, config, resume=True, force=True), stop=GracefulStop())
    return _row(summary, time.perf_counter() - started)


def _row(summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    best = summary["search"]["best"]
    return {
        "lr": best["lr"],
        "weight_decay": best["weight_decay"],
        "val": best["value"],
        "test_top1": summary["summary"]["test_top1"]["mean"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the study's pretext checkpoint (pretext.pt)")
    parser.add_argument("--config", default="study", help="config whose search is measured (default study)")
    parser.add_argument("--out", default="runs/selection", help="folder of the searches")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002, 1003, 1004, 1005])
    parser.add_argument("--rules", nargs="+", default=["holdout", "folds-5"])
    args = parser.parse_args()
    out = Path(args.out)
    table: dict[str, Any] = {}
    for seed in args.seeds:  # seed-major: a stopped run leaves every rule with the same finished seeds
        for rule in args.rules:
            row = run_one(args.config, args.checkpoint, rule, seed, out)
            table.setdefault(rule, {})[str(seed)] = row
            print(
                f"{rule:>8} seed {seed}: lr {row['lr']:.3g} wd {row['weight_decay']:.2g} "
                f"val {row['val']:.2f} test {row['test_top1']:.2f} ({row['seconds']:.0f} s)",
                flush=True,
            )
    report: dict[str, Any] = {"seeds": args.seeds, "rules": {}}
    print(
        f"\n{'rule':>8}  {'n':>2}  {'test mean':>9}  {'SD over seeds':>13}  {'range':>13}  {'s / search':>10}"
    )
    for rule, rows in table.items():
        tests = [row["test_top1"] for row in rows.values()]
        spread = statistics.stdev(tests) if len(tests) > 1 else math.nan
        seconds = statistics.mean(row["seconds"] for row in rows.values())
        report["rules"][rule] = {
            "rows": rows,
            "mean": statistics.mean(tests),
            "sd": spread,
            "min": min(tests),
            "max": max(tests),
            "seconds": seconds,
        }
        print(
            f"{rule:>8}  {len(tests):>2}  {statistics.mean(tests):>9.2f}  {spread:>13.2f}  "
            f"{min(tests):>6.2f}–{max(tests):<6.2f}  {seconds:>10.0f}"
        )
    (out / "selection.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
