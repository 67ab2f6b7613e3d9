"""Peak memory of one Hessian-vector product through a ViT against one plain backward, on the CPU.

The loss is SimCLR (the package's ``SimCLR`` task: the ViT, a 256-256-256 projector with BatchNorm, NT-Xent)
on two views of ``--batch`` images, float32, one thread. Each measurement runs in a fresh subprocess, which
builds the model and the data, runs one no-gradient forward of one image pair (so that one-time allocations
are paid before), reads its peak resident set size (``ru_maxrss``), then does one operation and reads the
peak again; the table shows both and their difference. The operations:

- ``backward (fused)``: forward and backward of the loss as training runs it (SDPA's fastest kernel: on the
  CPU the flash-attention kernel);
- ``backward (math)``: the same on the math kernel, to separate the kernel's share from double backward's;
- ``HVP reuse``: the first-order graph built once (``create_graph=True``, math kernel) and one product
  through it, as ``hvp_mode=reuse`` does at the start of each phase;
- ``HVP forward-over-reverse``: one product of ``torch.func.jvp`` over ``torch.func.grad``.

    .venv/bin/python benchmarks/vit_memory.py                              # vit_tiny and vit_small
    .venv/bin/python benchmarks/vit_memory.py --sizes vit_tiny --batch 16 --image-size 32 --patch 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

from bissl.bilevel.hvp import differentiable_attention, flat_parameters, hessian_vector_operator
from bissl.models import build_backbone, feature_dim
from bissl.pretext import SimCLR

OPERATIONS = {
    "backward-fused": "backward (fused)",
    "backward-math": "backward (math)",
    "hvp-reuse": "HVP reuse",
    "hvp-forward-over-reverse": "HVP forward-over-reverse",
}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(size: str, operation: str, batch: int, image_size: int, patch: int) -> dict[str, float]:
    """One operation in this process: peak RSS before and after it, and its wall time."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = build_backbone(size, in_channels=3, image_size=image_size, vit_patch_size=patch)
    task = SimCLR(backbone, feature_dim(backbone)).train()
    views = torch.randn(2, batch, 3, image_size, image_size)
    params = flat_parameters(task.backbone)
    vectors = tuple(torch.randn_like(p) for p in params)
    with torch.no_grad():
        task(views[0, :2], views[1, :2])
    before = _peak_mib()
    started = time.perf_counter()
    if operation.startswith("backward"):
        scope = differentiable_attention() if operation == "backward-math" else nullcontext()
        with scope:
            task(views[0], views[1]).backward()
    else:
        mode = operation.removeprefix("hvp-")
        operator = hessian_vector_operator(lambda: task(views[0], views[1]), params, mode, modules=[task])
        operator.matvec(vectors)
        operator.release()
    seconds = time.perf_counter() - started
    after = _peak_mib()
    return {"before_mib": before, "peak_mib": after, "delta_mib": after - before, "seconds": seconds}


def _child(size: str, operation: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        size,
        operation,
        "--batch",
        str(args.batch),
        "--image-size",
        str(args.image_size),
        "--patch",
        str(args.patch),
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["vit_tiny", "vit_small"])
    parser.add_argument("--operations", nargs="+", default=list(OPERATIONS), choices=list(OPERATIONS))
    parser.add_argument("--batch", type=int, default=8, help="images per view (the loss sees 2x as many)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "OPERATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.batch, args.image_size, args.patch)))
        return
    tokens = (args.image_size // args.patch) ** 2 + 1
    print(
        f"SimCLR on 2 x {args.batch} images of {args.image_size} px, patch {args.patch} ({tokens} tokens), "
        f"float32, 1 thread, torch {torch.__version__}\n"
    )
    print(
        "| backbone | operation | peak RSS before (MiB) | peak RSS after (MiB) | increase (MiB) | seconds |"
    )
    print("|---|---|---:|---:|---:|---:|")
    results = []
    for size in args.sizes:
        for operation in args.operations:
            row = _child(size, operation, args)
            results.append({"backbone": size, "operation": operation, **row})
            print(
                f"| {size} | {OPERATIONS[operation]} | {row['before_mib']:.0f} | {row['peak_mib']:.0f} | "
                f"{row['delta_mib']:.0f} | {row['seconds']:.2f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
