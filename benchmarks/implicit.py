"""Time one BiSSL upper phase under each Hessian-vector strategy and compare it with the reference's way.

One upper phase = ``--upper-steps`` upper steps, each solving (I + H/(λ+δ)) x = v with ``--iterations``
layerwise CG iterations on the same Hessian batch (a SimCLR loss on two views of ``--batch`` images),
then an SGD step on the upper backbone and head. Every strategy runs in a fresh subprocess so that its
peak memory (maximum resident set size above the resident size just before the first phase) is its own.
Wall-clock and process CPU seconds are both reported: with one thread on a shared machine CPU time is
the steadier measure of work.

    .venv/bin/python benchmarks/implicit.py                      # demo backbone and ResNet-18, 3 repeats
    .venv/bin/python benchmarks/implicit.py --backbones demo --repeats 5
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
from bissl.models.backbones import build_backbone, feature_dim
from bissl.models.heads import linear_head, mlp

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


def simclr_loss(first: Tensor, second: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent over the 2N embeddings of N image pairs."""
    embeddings = nn.functional.normalize(torch.cat([first, second]), dim=1)
    similarity = embeddings @ embeddings.T / temperature
    similarity = similarity.masked_fill(torch.eye(similarity.shape[0], dtype=torch.bool), float("-inf"))
    count = first.shape[0]
    targets = torch.cat([torch.arange(count, 2 * count), torch.arange(count)])
    return nn.functional.cross_entropy(similarity, targets)


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
    pretext_head = mlp(dim, (256,), 128).train().requires_grad_(False)
    upper_start, head_start = copy.deepcopy(lower), linear_head(dim, NUM_CLASSES)
    views = torch.randn(2, args.batch, channels, size, size)
    downstream = [
        (torch.randn(args.batch, channels, size, size), torch.randint(0, NUM_CLASSES, (args.batch,)))
        for _ in range(args.upper_steps)
    ]
    lower_params = flat_parameters(lower)
    mode = HVP_MODE[args.strategy]

    def pretext_loss() -> Tensor:
        return simclr_loss(pretext_head(lower(views[0])), pretext_head(lower(views[1])))

    def make_operator() -> HessianVectorOperator:
        return hessian_vector_operator(pretext_loss, lower_params, mode, modules=[lower, pretext_head])

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


def run_all(args: argparse.Namespace) -> None:
    """Run every (backbone, strategy) in its own subprocess and print the table."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backbone in args.backbones:
            reference: Tensor | None = None
            baseline_seconds = baseline_cpu = baseline_peak = float("nan")
            for strategy in args.strategies:
                report, gradients = (
                    Path(folder, f"{backbone}-{strategy}.json"),
                    Path(folder, f"{backbone}-{strategy}.pt"),
                )
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--backbone",
                    backbone,
                    "--strategy",
                    strategy,
                ]
                command += ["--report", str(report), "--gradients", str(gradients)]
                command += [
                    "--repeats",
                    str(args.repeats),
                    "--batch",
                    str(args.batch),
                    "--threads",
                    str(args.threads),
                ]
                command += ["--upper-steps", str(args.upper_steps), "--iterations", str(args.iterations)]
                subprocess.run(command, check=True)
                measured = json.loads(report.read_text())
                result = torch.load(gradients, weights_only=True)
                median = statistics.median(measured["seconds"])
                cpu_median = statistics.median(measured["cpu_seconds"])
                if strategy == "recompute":
                    reference, baseline_peak = result, measured["peak_mb"]
                    baseline_seconds, baseline_cpu = median, cpu_median
                difference = relative_difference(result, reference) if reference is not None else float("nan")
                row = {
                    "backbone": backbone,
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
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        f"one upper phase = {args.upper_steps} steps x {args.iterations} layerwise CG iterations, batch {args.batch} "
        f"(Hessian: 2 x {args.batch} views), {args.threads} thread(s), median of {args.repeats}"
    )
    print(
        "| backbone | strategy | wall s / phase | speed-up (wall) | CPU s / phase | speed-up (CPU) "
        "| max rel. diff vs recompute | peak MiB | peak / recompute |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['backbone']} | {row['strategy']} | {row['seconds']:.1f} | {row['speedup']:.2f}x "
            f"| {row['cpu_seconds']:.1f} | {row['cpu_speedup']:.2f}x | {row['max_relative_difference']:.1e} "
            f"| {row['peak_mb']:.0f} | {row['peak_ratio']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--upper-steps", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--gradients", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
    else:
        if "recompute" not in args.strategies:
            parser.error("--strategies must include recompute, the baseline every ratio is measured against")
        args.strategies = ["recompute"] + [s for s in args.strategies if s != "recompute"]
        run_all(args)


if __name__ == "__main__":
    main()
