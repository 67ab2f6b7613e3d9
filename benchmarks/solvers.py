"""Solvers for the BiSSL implicit system (I + C/μ) x = v on one upper phase: cost and quality (docs/method.md: Indefinite systems).

One upper phase = 8 solves, one per downstream gradient v (real downstream gradients of 8 batches),
against one Hessian batch. Every solver but the reference builds its operator once per phase (reuse);
the reference recomputes the forward pass at every product, as the authors' code does. The low-rank
bases are built once per phase from the phase's operator. Timed: operator and basis construction plus
the 8 solves (the downstream gradients are computed beforehand). Every solver runs once per repeat,
repeats interleaved, median reported.

Quality, measured after the timing on the same solutions: the true relative residual ‖v − A x‖/‖v‖ on
the system the solver solves (GGN-CG: C = Gauss–Newton matrix G; all others: C = Hessian H), the cosine
of x to the reference's solution, and to a tightly converged MINRES solution of the same system
(``--tight-iterations``), on the first ``--quality-steps`` of the 8 steps.

Two Hessians: the demo's pretext checkpoint (``--checkpoint``, written by
``bissl pretrain --config configs/demo.yaml --out RUN``; nothing is trained here) on a Hessian batch of
the demo configuration, and a randomly initialised ResNet-18 (small stem) at 32 px with a SimCLR head
on ``--resnet-batch`` random image pairs.

    python benchmarks/solvers.py --checkpoint RUN/checkpoints/pretext.pt
    python benchmarks/solvers.py --checkpoint RUN/checkpoints/pretext.pt --problems demo --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from bissl.bilevel.ggn import gauss_newton_operator
from bissl.bilevel.hvp import HessianVectorOperator, flat_parameters, frozen_bn_stats, hessian_vector_operator
from bissl.bilevel.solvers import Matvec, Vectors, cg, lowrank, minres, true_residual
from bissl.bilevel.spectrum import build_lowrank, flatten, lanczos, spectrum_summary
from bissl.config import load_config
from bissl.data.stream import BatchStream
from bissl.models import feature_dim, linear_head
from bissl.models.backbones import build_backbone
from bissl.pretext import PretextTask, SimCLR
from bissl.train.checkpoint_formats import load_pretext
from bissl.train.data_sources import (
    downstream_data,
    load_pretext_source,
    make_downstream_augment,
    make_two_view,
    pretext_stream,
)

SOLVERS = (
    "reference",
    "cg",
    "minres",
    "ggn-cg",
    "lowrank-5",
    "lowrank-10",
    "lowrank-20",
    "lowrank-10+minres-2",
    "identity",
)
DESCRIPTIONS = {
    "reference": "layerwise CG K=5, HVP recompute",
    "cg": "textbook CG K=5",
    "minres": "MINRES K=5",
    "ggn-cg": "GGN: textbook CG K=5 on I + G/μ",
    "lowrank-5": "low-rank k=5 (Lanczos, clip)",
    "lowrank-10": "low-rank k=10 (Lanczos, clip)",
    "lowrank-20": "low-rank k=20 (Lanczos, clip)",
    "lowrank-10+minres-2": "low-rank k=10 + deflated MINRES K=2",
    "identity": "identity (first order)",
}
ITERATIONS = 5
UPPER_STEPS = 8
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


@dataclass
class Problem:
    """A pretext task on a fixed Hessian batch and the downstream gradients of one upper phase."""

    name: str
    task: PretextTask
    views: tuple[Tensor, Tensor]
    gradients: list[Vectors]
    lam: float
    damping: float
    quality_steps: int
    tight_iterations: int
    notes: list[str] = field(default_factory=list)

    @property
    def params(self) -> Vectors:
        return flat_parameters(self.task.backbone)

    @property
    def mu(self) -> float:
        return self.lam + self.damping

    def hessian(self, mode: str) -> HessianVectorOperator:
        return hessian_vector_operator(
            lambda: self.task.loss(*self.views), self.params, mode, modules=[self.task]
        )

    def gauss_newton(self) -> HessianVectorOperator:
        return gauss_newton_operator(
            lambda: self.task.gauss_newton_split(*self.views), self.params, "reuse", modules=[self.task]
        )

    def system(self, operator: HessianVectorOperator) -> Matvec:
        """x ↦ x + C x / μ for the curvature C of ``operator``."""
        mu = self.mu

        def apply(x: Vectors) -> Vectors:
            return tuple(x_i + c_i / mu for x_i, c_i in zip(x, operator.matvec(x)))

        return apply


def _downstream_gradients(
    backbone: nn.Module, head: nn.Module, batches: list[tuple[Tensor, Tensor]]
) -> list[Vectors]:
    """∇_θ of the downstream cross-entropy of each batch (BatchNorm statistics kept)."""
    params = flat_parameters(backbone)
    gradients = []
    with frozen_bn_stats(backbone):
        for images, labels in batches:
            loss = nn.functional.cross_entropy(head(backbone(images)), labels)
            gradients.append(tuple(g.detach() for g in torch.autograd.grad(loss, params)))
    return gradients


def demo_problem(checkpoint: str, quality_steps: int, tight_iterations: int) -> Problem:
    """The demo's SimCLR pretext checkpoint, a Hessian batch of the demo configuration, 8 digits batches."""
    if not Path(checkpoint).is_file():
        sys.exit(
            f"no pretext checkpoint at {checkpoint}; make one with "
            "'bissl pretrain --config configs/demo.yaml --out RUN' and pass --checkpoint RUN/checkpoints/pretext.pt"
        )
    config = load_config(DEMO_CONFIG, [f"pretext_checkpoint={checkpoint}", "device=cpu"])
    torch.manual_seed(config.seed)
    source = load_pretext_source(config)
    task = load_pretext(checkpoint, config, source.channels).train()
    s = config.bilevel
    hessian_size = s.hessian_batch_size or s.lower_batch_size
    stream = pretext_stream(config, source, hessian_size, seed=config.seed + 1, device=torch.device("cpu"))
    first, second = make_two_view(config, source)(next(stream)[0])
    splits, downstream = downstream_data(config, None)
    augment = make_downstream_augment(config, splits["train"])
    batches = []
    images_stream = BatchStream(
        splits["train"], s.upper_batch_size, seed=config.seed, device=torch.device("cpu")
    )
    for _ in range(UPPER_STEPS):
        images, labels = next(images_stream)
        batches.append((augment(images, train=True), labels))
    head = linear_head(feature_dim(task.backbone), downstream.num_classes)
    gradients = _downstream_gradients(task.backbone, head, batches)
    notes = [
        f"demo pretext checkpoint {checkpoint}: SimCLR, {config.model.backbone} width {config.model.width}, "
        f"{config.data.image_size} px; Hessian batch {hessian_size} pairs; v = downstream gradients of "
        f"{UPPER_STEPS} digits batches of {s.upper_batch_size} through a fresh linear head"
    ]
    return Problem(
        "demo", task, (first, second), gradients, s.lam, s.damping, quality_steps, tight_iterations, notes
    )


def resnet_problem(batch: int, quality_steps: int, tight_iterations: int) -> Problem:
    """A random-init ResNet-18 (small stem) at 32 px with a SimCLR head, random views and downstream batches."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", stem="small")
    width = feature_dim(backbone)
    task = SimCLR(backbone, width, projector_hidden=(256,), projector_dim=128).train()
    first, second = torch.randn(2, batch, 3, 32, 32)
    head = linear_head(width, 10)
    batches = [(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))) for _ in range(UPPER_STEPS)]
    gradients = _downstream_gradients(backbone, head, batches)
    notes = [
        f"ResNet-18 (small stem), random init, 32 px, SimCLR head 256-128; Hessian batch {batch} random pairs; "
        f"v = downstream gradients of {UPPER_STEPS} random batches of 32 images through a random linear head"
    ]
    return Problem(
        "resnet18", task, (first, second), gradients, 1e-3, 10.0, quality_steps, tight_iterations, notes
    )


def run_phase(problem: Problem, solver: str) -> tuple[float, int, list[Vectors]]:
    """One upper phase with ``solver``: wall seconds, products spent, and the 8 solutions."""
    start = time.perf_counter()
    mu = problem.mu
    solutions: list[Vectors] = []
    if solver == "identity":
        solutions = [tuple(t.clone() for t in v) for v in problem.gradients]
        return time.perf_counter() - start, 0, solutions
    if solver == "reference":
        operator = problem.hessian("recompute")
    elif solver == "ggn-cg":
        operator = problem.gauss_newton()
    else:
        operator = problem.hessian("reuse")
    system = problem.system(operator)
    if solver.startswith("lowrank"):
        rank = int(solver.split("+")[0].split("-")[1])
        curvature = build_lowrank(
            operator.matvec, problem.params, rank=rank, generator=torch.Generator().manual_seed(0)
        )
        refine = "minres" if "+" in solver else "none"
        if refine == "none":
            operator.release()
        for v in problem.gradients:
            result = lowrank(
                system, v, iterations=2, curvature=curvature, mu=mu, negative="clip", refine=refine
            )
            solutions.append(result.x)
    else:
        for v in problem.gradients:
            if solver == "minres":
                result = minres(system, v, iterations=ITERATIONS)
            else:
                result = cg(system, v, iterations=ITERATIONS, layerwise=solver == "reference")
            solutions.append(result.x)
    products = operator.products
    operator.release()
    return time.perf_counter() - start, products, solutions


def _cosine(a: Vectors, b: Vectors) -> float:
    flat_a, flat_b = flatten(a).double(), flatten(b).double()
    return float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))


def benchmark(problem: Problem, args: argparse.Namespace) -> list[dict[str, object]]:
    """Time every solver (interleaved repeats), then measure residuals and cosines; print the table."""
    seconds: dict[str, list[float]] = {name: [] for name in SOLVERS}
    products: dict[str, int] = {}
    solutions: dict[str, list[Vectors]] = {}
    for _ in range(args.repeats):
        for name in SOLVERS:
            elapsed, used, xs = run_phase(problem, name)
            seconds[name].append(elapsed)
            products[name], solutions[name] = used, xs
            print(f"{problem.name} {name}: {elapsed:.2f} s, {used} products", file=sys.stderr, flush=True)

    steps = range(min(problem.quality_steps, UPPER_STEPS))
    hessian, ggn = problem.hessian("reuse"), problem.gauss_newton()
    systems = {"H": problem.system(hessian), "G": problem.system(ggn)}
    tight: dict[str, list[Vectors]] = {"H": [], "G": []}
    tight_residual: dict[str, list[float]] = {"H": [], "G": []}
    for key, system in systems.items():
        for i in steps:
            v = problem.gradients[i]
            x = minres(system, v, iterations=problem.tight_iterations).x
            tight[key].append(x)
            tight_residual[key].append(true_residual(system, v, x))
    summary_h = spectrum_summary(
        lanczos(
            hessian.matvec,
            problem.params,
            steps=20,
            generator=torch.Generator().manual_seed(0),
            vectors=False,
        ),
        problem.mu,
    )
    summary_g = spectrum_summary(
        lanczos(
            ggn.matvec, problem.params, steps=20, generator=torch.Generator().manual_seed(0), vectors=False
        ),
        problem.mu,
    )

    reference_seconds = statistics.median(seconds["reference"])
    rows: list[dict[str, object]] = []
    for name in SOLVERS:
        key = "G" if name == "ggn-cg" else "H"
        residuals = [true_residual(systems[key], problem.gradients[i], solutions[name][i]) for i in steps]
        to_reference = [_cosine(x, r) for x, r in zip(solutions[name], solutions["reference"])]
        to_tight = [_cosine(solutions[name][i], tight[key][i]) for i in steps]
        median = statistics.median(seconds[name])
        rows.append(
            {
                "problem": problem.name,
                "solver": name,
                "description": DESCRIPTIONS[name],
                "system": key,
                "products_per_phase": products[name],
                "seconds_per_phase": median,
                "all_seconds": seconds[name],
                "speedup_vs_reference": reference_seconds / median if median > 0 else math.inf,
                "true_residual": statistics.median(residuals),
                "cosine_to_reference": statistics.median(to_reference),
                "cosine_to_tight_minres": statistics.median(to_tight),
            }
        )
    hessian.release()
    ggn.release()

    size = sum(p.numel() for p in problem.params)
    print()
    for note in problem.notes:
        print(note)
    print(
        f"{size} backbone parameters; μ = λ + δ = {problem.mu:g}; one upper phase = {UPPER_STEPS} solves; "
        f"median of {args.repeats} repeats (wall clock)"
    )
    print(
        f"20 Lanczos steps: H Ritz values in [{summary_h.lambda_min:.4g}, {summary_h.lambda_max:.4g}], "
        f"{summary_h.below} below −μ; G in [{summary_g.lambda_min:.4g}, {summary_g.lambda_max:.4g}]"
    )
    print(
        f"tight MINRES ({problem.tight_iterations} iterations) true residual: H system "
        f"{statistics.median(tight_residual['H']):.2e}, G system {statistics.median(tight_residual['G']):.2e}; "
        f"residuals and cosines to it are medians over the first {len(steps)} of the {UPPER_STEPS} steps, "
        f"cosines to the reference over all {UPPER_STEPS}"
    )
    print(
        "| solver | system | products / phase | wall s / phase | speed-up vs reference "
        "| true rel. residual | cos to reference | cos to tight MINRES |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['description']} | I + {row['system']}/μ | {row['products_per_phase']} "
            f"| {row['seconds_per_phase']:.2f} | {row['speedup_vs_reference']:.1f}x "
            f"| {row['true_residual']:.3f} | {row['cosine_to_reference']:.3f} | {row['cosine_to_tight_minres']:.3f} |"
        )
    print(flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="runs/demo-pretrain/checkpoints/pretext.pt")
    parser.add_argument("--problems", nargs="+", default=["demo", "resnet18"], choices=["demo", "resnet18"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resnet-batch", type=int, default=2, help="Hessian pairs for ResNet-18")
    parser.add_argument(
        "--quality-steps", type=int, default=2, help="demo steps with residual and tight MINRES"
    )
    parser.add_argument("--tight-iterations", type=int, default=200, help="tight MINRES iterations (demo)")
    parser.add_argument("--resnet-quality-steps", type=int, default=1)
    parser.add_argument("--resnet-tight-iterations", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (medians of three or more)")
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.problems:
        start = time.perf_counter()
        if name == "demo":
            problem = demo_problem(args.checkpoint, args.quality_steps, args.tight_iterations)
        else:
            problem = resnet_problem(
                args.resnet_batch, args.resnet_quality_steps, args.resnet_tight_iterations
            )
        rows += benchmark(problem, args)
        print(f"{name}: the whole part took {time.perf_counter() - start:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
