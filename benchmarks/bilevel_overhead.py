"""Seconds per BiSSL alternation on the demo configuration, split into lower and upper phases, against
the same number of plain pretext steps and plain fine-tuning steps, and against the reference HVP
strategy (recompute) — all measured in one run, medians over alternations.

    python benchmarks/bilevel_overhead.py [--config configs/demo.yaml] [--alternations 4] [--threads 2]

With ``--diagnose-every N`` it measures instead what curvature diagnostics cost: blocks of N consecutive
alternations (each holds exactly one diagnosed alternation) with and without ``bilevel.diagnose_every=N``,
interleaved, and prints the median block time of each and their ratio (``--blocks``, at least 3).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bissl.bilevel.trainer import BilevelTrainer, initial_models
from bissl.config import load_config
from bissl.data.stream import BatchStream
from bissl.models import feature_dim, linear_head
from bissl.train.data_sources import downstream_data, load_data, make_downstream_augment, make_two_view
from bissl.train.model_factory import make_pretext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument(
        "--alternations", type=int, default=4, help="timed alternations per strategy (after one warm-up)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--diagnose-every",
        type=int,
        default=0,
        help="measure the cost of bilevel.diagnose_every=N against no diagnostics instead",
    )
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks of N alternations per arm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    pretext_data = load_data(config, "pretext", "train")
    splits, task = downstream_data(config, None)
    two_view = make_two_view(config, pretext_data)
    augment = make_downstream_augment(config, splits["train"])
    torch.manual_seed(0)
    base_lower = make_pretext(config, pretext_data.channels)
    base_head = linear_head(feature_dim(base_lower.backbone), task.num_classes)
    s = config.bilevel

    def build(
        mode: str, scope: str, diagnose_every: int = 0, alternations: int = args.alternations + 1
    ) -> BilevelTrainer:
        lower = copy.deepcopy(base_lower)
        upper = initial_models(lower, None)
        lower_stream = BatchStream(pretext_data, s.lower_batch_size, seed=0)
        hessian_stream = BatchStream(pretext_data, s.hessian_batch_size or s.lower_batch_size, seed=1)
        upper_stream = BatchStream(splits["train"], s.upper_batch_size, seed=0)

        def lower_batches() -> tuple[torch.Tensor, torch.Tensor]:
            return two_view(next(lower_stream)[0])

        def hessian_batches() -> tuple[torch.Tensor, torch.Tensor]:
            return two_view(next(hessian_stream)[0])

        def upper_batches() -> tuple[torch.Tensor, torch.Tensor]:
            images, labels = next(upper_stream)
            return augment(images, train=True), labels

        settings = dataclasses.replace(
            s, hvp_mode=mode, hvp_scope=scope, alternations=alternations, diagnose_every=diagnose_every
        )
        return BilevelTrainer(
            lower,
            upper,
            copy.deepcopy(base_head),
            F.cross_entropy,
            lower_batches,
            upper_batches,
            settings,
            hessian_batches=hessian_batches,
        )

    def plain_steps() -> tuple[float, float]:
        """The same number of plain pretext steps (LARS) and plain fine-tuning steps (SGD)."""
        trainer = build("reuse", "phase")
        trainer.lower_phase()
        started = time.perf_counter()
        lower = trainer.lower
        for _ in range(s.lower_steps):
            view1, view2 = trainer.lower_batches()
            trainer.lower_optimizer.zero_grad()
            lower(view1, view2).backward()
            trainer.lower_optimizer.step()
        pretext_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(s.upper_steps):
            images, labels = trainer.upper_batches()
            trainer.upper_optimizer.zero_grad()
            F.cross_entropy(trainer.upper_head(trainer.upper_backbone(images)), labels).backward()
            trainer.upper_optimizer.step()
        return pretext_seconds, time.perf_counter() - started

    if args.diagnose_every > 0:
        diagnostics_cost(build, args.diagnose_every, max(3, args.blocks), args)
        return
    rows: dict[str, tuple[float, float]] = {}
    plain = [plain_steps() for _ in range(args.alternations)]
    rows["plain steps"] = (statistics.median(p[0] for p in plain), statistics.median(p[1] for p in plain))
    for label, mode, scope in (
        ("recompute (reference)", "recompute", "phase"),
        ("reuse per step", "reuse", "step"),
        ("reuse per phase (default)", "reuse", "phase"),
    ):
        trainer = build(mode, scope)
        trainer.alternate()
        records = [trainer.alternate() for _ in range(args.alternations)]
        rows[label] = (
            statistics.median(r["lower_seconds"] for r in records),
            statistics.median(r["upper_seconds"] for r in records),
        )
    reference_upper = rows["recompute (reference)"][1]
    plain_total = sum(rows["plain steps"])
    print(
        f"config {args.config}: {s.lower_steps} lower + {s.upper_steps} upper steps, {s.solver_iterations} CG iterations, "
        f"lower batch {s.lower_batch_size}, Hessian batch {s.hessian_batch_size or s.lower_batch_size}, upper batch {s.upper_batch_size}, "
        f"{args.threads} threads, medians of {args.alternations}"
    )
    print(
        f"{'strategy':<28} {'lower s':>8} {'upper s':>8} {'total s':>8} {'vs plain':>9} {'upper vs recompute':>19}"
    )
    for label, (lower_seconds, upper_seconds) in rows.items():
        total = lower_seconds + upper_seconds
        print(
            f"{label:<28} {lower_seconds:8.2f} {upper_seconds:8.2f} {total:8.2f} {total / plain_total:8.2f}x "
            f"{reference_upper / upper_seconds:18.2f}x"
        )


def diagnostics_cost(
    build: Callable[..., BilevelTrainer], every: int, blocks: int, args: argparse.Namespace
) -> None:
    """Median seconds of ``every`` consecutive alternations (lower + upper phases) with and without
    diagnostics every ``every`` alternations; the two arms alternate one alternation at a time, so a change
    in the machine's load hits both."""
    alternations = 1 + blocks * every
    default, diagnosed = "reuse per phase (default)", f"+ diagnose_every={every}"
    arms = {
        default: build("reuse", "phase", 0, alternations),
        diagnosed: build("reuse", "phase", every, alternations),
    }
    for trainer in arms.values():
        trainer.alternate()  # warm-up (diagnosed in the second arm)
    seconds: dict[str, list[float]] = {label: [] for label in arms}
    counts: dict[str, int] = dict.fromkeys(arms, 0)
    products: dict[str, int] = dict.fromkeys(arms, 0)
    for _ in range(blocks):
        block = dict.fromkeys(arms, 0.0)
        for _ in range(every):
            for label, trainer in arms.items():
                record = trainer.alternate()
                block[label] += record["lower_seconds"] + record["upper_seconds"]
                counts[label] += "lambda_min" in record
                products[label] += record["products"]
        for label, value in block.items():
            seconds[label].append(value)
    s = arms[diagnosed].settings
    print(
        f"config {args.config}: blocks of {every} alternations ({s.lower_steps} lower + {s.upper_steps} upper "
        f"steps, {s.solver_iterations} iterations), diagnostics {s.diagnose_steps} Lanczos steps + 1 residual "
        f"product, {args.threads} threads, medians of {blocks} blocks per arm, arms interleaved per alternation"
    )
    print(
        f"{'arm':<28} {'s / block':>10} {'s / alternation':>16} {'products / alt.':>16} {'diagnosed':>10} "
        f"{'vs default':>11}"
    )
    reference = statistics.median(seconds[default])
    timed = blocks * every
    for label, values in seconds.items():
        block_seconds = statistics.median(values)
        print(
            f"{label:<28} {block_seconds:10.2f} {block_seconds / every:16.2f} {products[label] / timed:16.1f} "
            f"{counts[label]:10d} {block_seconds / reference:10.3f}x"
        )
    print(
        "blocks (s): "
        + "; ".join(f"{label}: {', '.join(f'{v:.1f}' for v in values)}" for label, values in seconds.items())
    )


if __name__ == "__main__":
    main()
