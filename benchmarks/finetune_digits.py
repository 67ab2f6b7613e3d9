"""Does the demo's SimCLR pretraining (Fashion-MNIST, no labels) help on digits? Pretrained backbone against
random initialisation, each over the same seeds: fine-tuning test accuracy after the search protocol, and
k-NN / linear-probe accuracy of the frozen features. Prints a table of mean ± std and writes results.json.

    bissl pretrain --config configs/demo.yaml --out runs/pretrain-demo
    python benchmarks/finetune_digits.py --backbone runs/pretrain-demo/backbone.pt

Each arm gets its own search (``search.trials`` trials of ``search.epochs`` epochs on the validation split)
and then ``--seeds`` fine-tuning runs at its best setting (``finetune.epochs`` epochs, seeds seed + i);
``--trials 0`` skips the search and uses ``finetune.lr`` / ``finetune.weight_decay`` for both arms. Every
part resumes: rerun the same command after an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from bissl.config import Config, load_config
from bissl.errors import BisslError
from bissl.eval import format_summary, summarize
from bissl.runtime import seed_everything
from bissl.train.checkpoint_formats import load_backbone_weights
from bissl.train.data_sources import downstream_data
from bissl.train.evaluate import alignment
from bissl.train.model_factory import make_backbone
from bissl.train.search import run_search, run_seeds, seed_statistics

ARMS = ("pretrained", "random init")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--backbone", required=True, help="the pretrained backbone (backbone.pt of bissl pretrain)"
    )
    parser.add_argument(
        "--config", default="configs/demo.yaml", help="the config the backbone was pretrained with"
    )
    parser.add_argument(
        "--out", default="runs/bench-finetune-digits", help="folder for the runs and results.json"
    )
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs and probes per arm")
    parser.add_argument(
        "--trials", type=int, default=None, help="search trials per arm (default search.trials)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_args(argv)


def arm_config(config: Config, arm: str, backbone: str) -> Config:
    return dataclasses.replace(config, backbone=backbone if arm == "pretrained" else None)


def finetune_arm(config: Config, folder: Path, trials: int) -> dict[str, Any]:
    """Search (unless ``trials`` is 0), then the seeds at the chosen setting."""
    if trials > 0:
        search_config = dataclasses.replace(config, search=dataclasses.replace(config.search, trials=trials))
        best = run_search(search_config, folder)["best"]
        lr, weight_decay = best["lr"], best["weight_decay"]
    else:
        lr, weight_decay = config.finetune.lr, config.finetune.weight_decay
    seeds = run_seeds(config, folder, lr, weight_decay)
    return {"lr": lr, "weight_decay": weight_decay, "seeds": seeds, "summary": seed_statistics(seeds)}


def probe_arms(config: Config, backbone: str, seeds: int, folder: Path) -> dict[str, dict[str, list[float]]]:
    """k-NN and probe accuracy of both frozen backbones per seed (the random one is drawn with each seed);
    the first seed also draws the t-SNE figure of both."""
    data, task = downstream_data(config, folder)
    channels = data["train"].channels
    scores: dict[str, dict[str, list[float]]] = {arm: {"knn_top1": [], "probe_top1": []} for arm in ARMS}
    for index in range(seeds):
        seed = config.seed + index
        seed_everything(seed)
        models = {
            "pretrained": load_backbone_weights(backbone, config, channels),
            "random init": make_backbone(config, channels),
        }
        tsne = config.eval.tsne_samples if index == 0 else 0
        seed_config = dataclasses.replace(
            config, seed=seed, eval=dataclasses.replace(config.eval, tsne_samples=tsne)
        )
        result = alignment(seed_config, models, data, task, folder)
        for arm in ARMS:
            for key in ("knn_top1", "probe_top1"):
                scores[arm][key].append(float(result["probes"][arm][key]))
    return scores


def table(results: dict[str, Any]) -> str:
    header = f"{'arm':<12} {'fine-tune test top1':<24} {'k-NN top1':<24} {'linear probe top1':<24} lr / wd"
    lines = [header, "-" * len(header)]
    for arm in ARMS:
        block = results["arms"][arm]
        cells = [block["finetune"]["summary"]["test_top1"], block["knn_top1"], block["probe_top1"]]
        text = " ".join(f"{format_summary(cell):<24}" for cell in cells)
        lines.append(
            f"{arm:<12} {text} {block['finetune']['lr']:.3g} / {block['finetune']['weight_decay']:.3g}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.backbone).is_file():
        print(
            f"no backbone at {args.backbone}: run bissl pretrain --config {args.config} first",
            file=sys.stderr,
        )
        return 2
    overrides = [*args.overrides, f"search.seeds={args.seeds}"]
    try:
        config = load_config(args.config, overrides)
    except BisslError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    trials = config.search.trials if args.trials is None else args.trials
    started = time.perf_counter()
    results: dict[str, Any] = {
        "backbone": args.backbone,
        "config": args.config,
        "overrides": overrides,
        "arms": {},
    }
    for arm in ARMS:
        folder = out / arm.replace(" ", "-")
        results["arms"][arm] = {
            "finetune": finetune_arm(arm_config(config, arm, args.backbone), folder, trials)
        }
    probes = probe_arms(config, args.backbone, args.seeds, out / "alignment")
    for arm in ARMS:
        for key, values in probes[arm].items():
            results["arms"][arm][key] = summarize(values)
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"t-SNE: {out / 'alignment' / 'tsne.png'}; results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
