"""Time one BiSSL upper phase under each Hessian-vector strategy and compare it with the reference's way.

One upper phase = ``--upper-steps`` upper steps, each solving (I + H/(λ+δ)) x = v with ``--iterations``
layerwise CG iterations on the same Hessian batch (the pretext loss of ``--pretext`` on two views of
``--batch`` images, SimCLR by default), then an SGD step on the upper backbone and head. The pretext task
is the package's own (``bissl.pretext.build_pretext``, projector 256-128), and H is the Hessian of its
``loss(view1, view2)`` w.r.t. the backbone, as in the trainer. Every (backbone, pretext, strategy) runs in
a fresh subprocess so that its peak memory (maximum resident set size above the resident size just before
the first phase) is its own. Wall-clock and process CPU seconds are both reported: with one thread on a
shared machine CPU time is the steadier measure of work. With several pretext methods the table adds each
one's cost relative to SimCLR's (same backbone and strategy, same run).

    .venv/bin/python benchmarks/implicit.py                      # demo backbone and ResNet-18, 3 repeats
    .venv/bin/python benchmarks/implicit.py --backbones demo --repeats 5
    .venv/bin/python benchmarks/implicit.py --backbones demo --strategies reuse-per-phase \
        --pretext simclr,byol,vicreg,barlow_twins,mocov3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from bissl.bilevel.hvp import HessianVectorOperator, flat_parameters, frozen_bn_stats, hessian_vector_operator
from bissl.bilevel.implicit import upper_gradients
from bissl.config import PretextConfig
from bissl.models.backbones import build_backbone, feature_dim
from bissl.models.heads import linear_head
from bissl.pretext import PRETEXT_TASKS, build_pretext

STRATEGIES = ("recompute", "reuse-per-step", "reuse-per-phase", "forward-over-reverse")
HVP_MODE = {
    "recompute": "recompute",
    "reuse-per-step": "reuse",
    "reuse-per-phase": "reuse",
    "forward-over-reverse": "forward-over-reverse",
}
BACKBONES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int]]] = {
    "demo": (lambda: build_backbone("small_resnet", in_channels=1, width=16, blocks=(1, 1, 1)), (1, 28)),
    "resnet18": (lambda: build_backbone("resnet18", stem="small"), (3, 32)),
}
NUM_CLASSES = 10
# The pretext head of every method: one hidden layer of 256 (Linear-BN-ReLU), 128 outputs; BYOL's and MoCo v3's
# predictor keeps PretextConfig's default (one hidden layer of 256). Every other knob is PretextConfig's default.
PROJECTOR_HIDDEN, PROJECTOR_DIM = [256], 128


def resident_megabytes() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_resident_megabytes() -> float:
    """Largest resident set size this process has had (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(args: argparse.Namespace) -> None:
    """Run ``--repeats`` upper phases with one strategy; write timings, peak memory and the gradients."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build, (channels, size) = BACKBONES[args.backbone]
    lower = build().train()
    dim = feature_dim(lower)
    config = PretextConfig(
        method=args.pretext, projector_hidden=PROJECTOR_HIDDEN, projector_dim=PROJECTOR_DIM
    )
    task = build_pretext(config, lower, dim).train()
    task.head.requires_grad_(False)  # φ_P is fixed in the upper phase; H is w.r.t. the backbone only
    upper_start, head_start = copy.deepcopy(lower), linear_head(dim, NUM_CLASSES)
    views = torch.randn(2, args.batch, channels, size, size)
    downstream = [
        (torch.randn(args.batch, channels, size, size), torch.randint(0, NUM_CLASSES, (args.batch,)))
        for _ in range(args.upper_steps)
    ]
    lower_params = flat_parameters(lower)
    mode = HVP_MODE[args.strategy]

    def pretext_loss() -> Tensor:
        return task.loss(views[0], views[1])

    def make_operator() -> HessianVectorOperator:
        return hessian_vector_operator(pretext_loss, lower_params, mode, modules=[task])

    def upper_phase() -> list[Tensor]:
        upper, head = copy.deepcopy(upper_start).train(), copy.deepcopy(head_start)
        phase_operator = make_operator() if args.strategy == "reuse-per-phase" else None
        gradients = []
        for images, labels in downstream:
            operator = phase_operator if phase_operator is not None else make_operator()

            def downstream_loss(
                backbone: nn.Module, classifier: nn.Module, images: Tensor = images, labels: Tensor = labels
            ) -> Tensor:
                return nn.functional.cross_entropy(classifier(backbone(images)), labels)

            with frozen_bn_stats(lower):
                result = upper_gradients(
                    hvp_operator_or_matvec=operator,
                    lower_backbone=lower,
                    upper_backbone=upper,
                    upper_head=head,
                    downstream_loss_fn=downstream_loss,
                    lam=1e-3,
                    damping=10.0,
                    gamma=1.0,
                    solver="cg",
                    solver_options={"iterations": args.iterations, "layerwise": True},
                )
            if phase_operator is None:
                operator.release()
            step = torch.cat([g.reshape(-1) for g in (*result.backbone, *result.head)])
            gradients.append(step)
            with torch.no_grad():
                for p, g in zip(
                    (*flat_parameters(upper), *flat_parameters(head)), (*result.backbone, *result.head)
                ):
                    p.sub_(0.03 * g)
        if phase_operator is not None:
            phase_operator.release()
        return gradients

    baseline = resident_megabytes()
    seconds, cpu_seconds, gradients = [], [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        gradients = upper_phase()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    peak = peak_resident_megabytes() - baseline
    torch.save(torch.stack(gradients), args.gradients)
    Path(args.report).write_text(
        json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak})
    )


def relative_difference(result: Tensor, reference: Tensor) -> float:
    """Largest per-step relative difference ‖g − g_ref‖ / ‖g_ref‖ over the upper steps."""
    return float(((result - reference).norm(dim=1) / reference.norm(dim=1)).max())


def run_one(args: argparse.Namespace, folder: str, backbone: str, pretext: str, strategy: str) -> dict:
    """One (backbone, pretext, strategy) in its own subprocess: its timings, peak memory and gradients."""
    name = f"{backbone}-{pretext}-{strategy}"
    report, gradients = Path(folder, f"{name}.json"), Path(folder, f"{name}.pt")
    command = [sys.executable, __file__, "--worker", "--backbone", backbone, "--pretext", pretext]
    command += ["--strategy", strategy, "--report", str(report), "--gradients", str(gradients)]
    command += ["--repeats", str(args.repeats), "--batch", str(args.batch), "--threads", str(args.threads)]
    command += ["--upper-steps", str(args.upper_steps), "--iterations", str(args.iterations)]
    subprocess.run(command, check=True)
    measured = json.loads(report.read_text())
    measured["gradients"] = torch.load(gradients, weights_only=True)
    if args.save_gradients:
        torch.save(measured["gradients"], Path(args.save_gradients, f"{name}.pt"))
    return measured


def run_all(args: argparse.Namespace) -> None:
    """Run every (backbone, pretext, strategy) in its own subprocess and print the table.

    Speed-ups and the gradient difference are against recompute with the same backbone and pretext (when
    recompute is among the strategies); cost ratios to SimCLR against simclr with the same backbone and
    strategy (when simclr and another method are among the pretexts).
    """
    nan = float("nan")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backbone in args.backbones:
            simclr: dict[str, dict] = {}
            for pretext in args.pretext:
                reference: Tensor | None = None
                baseline_seconds = baseline_cpu = baseline_peak = nan
                for strategy in args.strategies:
                    measured = run_one(args, folder, backbone, pretext, strategy)
                    result = measured["gradients"]
                    median = statistics.median(measured["seconds"])
                    cpu_median = statistics.median(measured["cpu_seconds"])
                    if strategy == "recompute":
                        reference, baseline_peak = result, measured["peak_mb"]
                        baseline_seconds, baseline_cpu = median, cpu_median
                    if pretext == "simclr":
                        simclr[strategy] = {"seconds": median, "cpu_seconds": cpu_median}
                    difference = relative_difference(result, reference) if reference is not None else nan
                    versus = simclr.get(strategy, {"seconds": nan, "cpu_seconds": nan})
                    row = {
                        "backbone": backbone,
                        "pretext": pretext,
                        "strategy": strategy,
                        "seconds": median,
                        "all_seconds": measured["seconds"],
                        "speedup": baseline_seconds / median,
                        "cpu_seconds": cpu_median,
                        "all_cpu_seconds": measured["cpu_seconds"],
                        "cpu_speedup": baseline_cpu / cpu_median,
                        "max_relative_difference": difference,
                        "peak_mb": measured["peak_mb"],
                        "peak_ratio": measured["peak_mb"] / baseline_peak,
                        "seconds_vs_simclr": median / versus["seconds"],
                        "cpu_seconds_vs_simclr": cpu_median / versus["cpu_seconds"],
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    print_table(args, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def print_table(args: argparse.Namespace, rows: list[dict]) -> None:
    """The rows as a Markdown table: a pretext column and cost ratios to SimCLR when several methods ran, the
    speed-ups, gradient differences and memory ratios against recompute when it ran."""
    methods = len(args.pretext) > 1
    against_simclr = methods and "simclr" in args.pretext
    against_recompute = "recompute" in args.strategies
    print(
        f"one upper phase = {args.upper_steps} steps x {args.iterations} layerwise CG iterations, batch {args.batch} "
        f"(Hessian: 2 x {args.batch} views), {args.threads} thread(s), median of {args.repeats}"
    )
    header = ["backbone", *(["pretext"] if methods else []), "strategy", "wall s / phase"]
    header += ["speed-up (wall)"] if against_recompute else []
    header += ["CPU s / phase"]
    header += ["speed-up (CPU)", "max rel. diff vs recompute"] if against_recompute else []
    header += ["peak MiB", *(["peak / recompute"] if against_recompute else [])]
    header += ["wall / simclr", "CPU / simclr"] if against_simclr else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["backbone"], *([row["pretext"]] if methods else []), row["strategy"]]
        cells += [f"{row['seconds']:.1f}"]
        cells += [f"{row['speedup']:.2f}x"] if against_recompute else []
        cells += [f"{row['cpu_seconds']:.1f}"]
        if against_recompute:
            cells += [f"{row['cpu_speedup']:.2f}x", f"{row['max_relative_difference']:.1e}"]
        cells += [f"{row['peak_mb']:.0f}", *([f"{row['peak_ratio']:.2f}"] if against_recompute else [])]
        if against_simclr:
            cells += [f"{row['seconds_vs_simclr']:.2f}", f"{row['cpu_seconds_vs_simclr']:.2f}"]
        print("| " + " | ".join(cells) + " |")


def pretext_list(text: str) -> list[str]:
    """``simclr,vicreg`` -> ["simclr", "vicreg"], each a known pretext method."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRETEXT_TASKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown pretext method(s) {', '.join(unknown) or text!r}; one of {', '.join(PRETEXT_TASKS)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument(
        "--pretext",
        type=pretext_list,
        default=["simclr"],
        metavar="M[,M...]",
        help=f"pretext method(s) whose loss gives the Hessian, comma-separated: {', '.join(PRETEXT_TASKS)} "
        "(default simclr); simclr runs first, the baseline of the cost ratios",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--upper-steps", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--save-gradients",
        metavar="DIR",
        help="also save each run's upper gradients to DIR/BACKBONE-PRETEXT-STRATEGY.pt",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--gradients", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (args.pretext,) = args.pretext
        run_worker(args)
    else:
        # recompute first (the baseline of the speed-ups and gradient differences), simclr first (the baseline
        # of the cost ratios); duplicates dropped.
        args.strategies = sorted(dict.fromkeys(args.strategies), key=lambda s: s != "recompute")
        args.pretext = sorted(dict.fromkeys(args.pretext), key=lambda m: m != "simclr")
        if args.save_gradients:
            Path(args.save_gradients).mkdir(parents=True, exist_ok=True)
        run_all(args)


if __name__ == "__main__":
    main()
