"""GPU check for paper-scale BiSSL: HVP correctness on the device, pretraining throughput with and without bf16
autocast (+ channels_last) and GPU augmentation, and seconds per upper phase for each HVP mode on the ResNets
and for one phase on DINO's ViT-S/16 at 224 px (paper-dino-vits16-imagenet).

Run it through benchmarks/gpu_check.sh (checks CUDA first). ``--smoke`` runs every part on the CPU at toy sizes
to check the script itself. Everything is measured in this one process, on synthetic data; each part stops
early when the time budget (``--budget`` seconds) is spent and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bissl.bilevel.hvp import HVP_MODES, frozen_bn_stats, hessian_vector_operator
from bissl.bilevel.trainer import BilevelTrainer, initial_models
from bissl.config import BilevelConfig, PretextConfig
from bissl.data.augment import TwoViewAugment
from bissl.data.folder_stream import IMAGENET_MEAN, IMAGENET_STD
from bissl.models import build_backbone, feature_dim
from bissl.optim import LARS, lars_groups
from bissl.precision import autocast, channels_last
from bissl.pretext import PretextTask, build_pretext


@dataclass(frozen=True)
class VitPhase:
    """The ViT upper phase: backbone, image size, patch size, Hessian and downstream batch, and the DINO head
    (hidden widths, bottleneck, prototypes); the ``vit`` backbone takes ``width``, ``depth`` and ``heads``."""

    backbone: str
    image_size: int
    patch_size: int
    batch_size: int
    head_hidden: tuple[int, ...]
    bottleneck: int
    out_dim: int
    width: int = 192
    depth: int = 12
    heads: int = 3

    def label(self) -> str:
        return f"{self.backbone}/{self.patch_size} {self.image_size}px dino"


@dataclass
class Sizes:
    """Workload sizes: the paper's on a GPU, toy ones for ``--smoke`` on the CPU."""

    image_size: int
    batch_size: int
    warmup_steps: int
    timed_steps: int
    backbones: tuple[str, ...]
    upper_steps: int
    solver_iterations: int
    vit: VitPhase


# ViT-S/16 at 224 px with DINO's published head (paper-dino-vits16-imagenet), on a small batch
GPU_VIT = VitPhase("vit_small", 224, 16, 32, (2048, 2048), 256, 65536)
SMOKE_VIT = VitPhase("vit", 16, 4, 4, (16,), 8, 32, width=16, depth=2, heads=2)
GPU_SIZES = Sizes(96, 256, 3, 10, ("resnet18", "resnet50"), 8, 5, GPU_VIT)
SMOKE_SIZES = Sizes(16, 8, 1, 1, ("small_resnet",), 2, 2, SMOKE_VIT)


class Budget:
    """Wall-clock budget shared by all parts; a part asks before each measurement."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pretext_task(backbone_name: str, method: str = "simclr") -> PretextTask:
    """The paper's pretext task: torchvision ResNet (ImageNet stem), 256-256-256 projector."""
    backbone = build_backbone(backbone_name, in_channels=3, stem="imagenet")
    config = PretextConfig(method=method, predictor_hidden=[256, 256])  # type: ignore[arg-type]
    return build_pretext(config, backbone, feature_dim(backbone))


def vit_dino_task(phase: VitPhase) -> PretextTask:
    """DINO on a ViT, as paper-dino-vits16-imagenet builds it (at the toy sizes of ``--smoke`` on the CPU)."""
    backbone = build_backbone(
        phase.backbone,
        in_channels=3,
        image_size=phase.image_size,
        vit_patch_size=phase.patch_size,
        vit_width=phase.width,
        vit_depth=phase.depth,
        vit_heads=phase.heads,
    )
    config = PretextConfig(
        method="dino",
        projector_hidden=list(phase.head_hidden),
        projector_dim=phase.bottleneck,
        dino_out_dim=phase.out_dim,
        dino_norm_last_layer=False,
        dino_teacher_temperature=0.07,
        dino_warmup_teacher_temperature=0.07,
    )
    return build_pretext(config, backbone, feature_dim(backbone))


# ---------------------------------------------------------------------------------------------------------
# 1. HVP correctness on the device


def _rel(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    num = math.sqrt(sum(float((x - y).double().pow(2).sum()) for x, y in zip(a, b)))
    den = math.sqrt(sum(float(y.double().pow(2).sum()) for y in b))
    return num / max(den, 1e-300)


def hvp_check(device: torch.device) -> list[dict[str, Any]]:
    """Every HVP mode against central finite differences of the gradient, in float64 on ``device``, on a small
    ResNet + SimCLR head with BatchNorm in train mode; plus the bf16-against-fp32 error of the reuse mode."""
    torch.manual_seed(0)
    task = pretext_task_small().to(device=device, dtype=torch.float64).train()
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(16, 3, 16, 16, generator=generator, dtype=torch.float64).to(device)
    views = (
        images,
        (images + 0.1 * torch.randn(images.shape, generator=generator, dtype=torch.float64).to(device)),
    )
    params = tuple(task.backbone.parameters())
    vector = tuple(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(device) for p in params)

    def loss() -> torch.Tensor:
        return task(*views)

    def gradient_at(shift: float) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            for p, v in zip(params, vector):
                p.add_(shift * v)
        try:
            with frozen_bn_stats(task), torch.enable_grad():
                return tuple(g.detach() for g in torch.autograd.grad(loss(), params, allow_unused=False))
        finally:
            with torch.no_grad():
                for p, v in zip(params, vector):
                    p.sub_(shift * v)

    eps = 1e-6
    plus, minus = gradient_at(eps), gradient_at(-eps)
    finite = tuple((a - b) / (2 * eps) for a, b in zip(plus, minus))
    rows = []
    products: dict[str, tuple[torch.Tensor, ...]] = {}
    for mode in HVP_MODES:
        with frozen_bn_stats(task), hessian_vector_operator(loss, params, mode, modules=[task]) as operator:
            products[mode] = operator.matvec(vector)
        error = _rel(products[mode], finite)
        rows.append(
            {"check": f"{mode} HVP vs finite differences (fp64)", "rel_error": error, "ok": error < 1e-5}
        )
    for mode in HVP_MODES:
        if mode != "reuse":
            error = _rel(products[mode], products["reuse"])
            rows.append({"check": f"{mode} vs reuse (fp64)", "rel_error": error, "ok": error < 1e-10})
    if device.type == "cuda":
        cpu_task = pretext_task_small().double()
        cpu_task.load_state_dict({k: v.cpu() for k, v in task.state_dict().items()})
        cpu_views = tuple(v.cpu() for v in views)
        cpu_params = tuple(cpu_task.backbone.parameters())
        with (
            frozen_bn_stats(cpu_task),
            hessian_vector_operator(
                lambda: cpu_task(*cpu_views), cpu_params, "reuse", modules=[cpu_task]
            ) as operator,
        ):
            on_cpu = operator.matvec(tuple(v.cpu() for v in vector))
        error = _rel(tuple(p.cpu() for p in products["reuse"]), on_cpu)
        rows.append({"check": "GPU vs CPU reuse HVP (fp64)", "rel_error": error, "ok": error < 1e-9})
    task32 = task.float()
    views32 = tuple(v.float() for v in views)
    params32 = tuple(task32.backbone.parameters())
    vector32 = tuple(v.float() for v in vector)
    results = {}
    for precision in ("fp32", "bf16"):

        def loss32(precision: str = precision) -> torch.Tensor:
            with autocast(device, precision):
                return task32(*views32)

        with (
            frozen_bn_stats(task32),
            hessian_vector_operator(loss32, params32, "reuse", modules=[task32]) as op,
        ):
            results[precision] = op.matvec(vector32)
    error = _rel(results["fp32"], tuple(f.float() for f in finite))
    rows.append({"check": "fp32 reuse HVP vs finite differences", "rel_error": error, "ok": error < 5e-2})
    error = _rel(results["bf16"], results["fp32"])
    rows.append(
        {"check": "bf16 HVP vs fp32 HVP (information)", "rel_error": error, "ok": math.isfinite(error)}
    )
    batch, size = (64, 96) if device.type == "cuda" else (4, 32)
    error = resnet_bf16_hvp_error(device, batch, size)
    check = f"ResNet-18 bf16 HVP vs fp32, 2x{batch} at {size} px (information)"
    rows.append({"check": check, "rel_error": error, "ok": math.isfinite(error)})
    return rows


def resnet_bf16_hvp_error(device: torch.device, batch: int, size: int) -> float:
    """Relative error of a bf16-autocast HVP against the fp32 one for the v1 model on one Hessian batch."""
    torch.manual_seed(0)
    task = pretext_task("resnet18").to(device).train()
    images = torch.rand(batch, 3, size, size, device=device)
    views = (images, images.flip(-1))
    params = tuple(task.backbone.parameters())
    vector = tuple(torch.randn_like(p) for p in params)
    products = {}
    for precision in ("fp32", "bf16"):

        def loss(precision: str = precision) -> torch.Tensor:
            with autocast(device, precision):
                return task(*views)

        with (
            frozen_bn_stats(task),
            hessian_vector_operator(loss, params, "reuse", modules=[task]) as operator,
        ):
            products[precision] = operator.matvec(vector)
    return _rel(products["bf16"], products["fp32"])


def pretext_task_small() -> PretextTask:
    """A small conv net with BatchNorm and a SimCLR head, every ReLU replaced by tanh: second derivatives of
    ReLU networks ignore the kinks that finite differences of gradients pick up, so the check needs a smooth
    loss."""
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    task = build_pretext(PretextConfig(projector_hidden=[16], projector_dim=8), backbone, 8)
    for module in task.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Tanh())
    return task


# ---------------------------------------------------------------------------------------------------------
# 2. Pretraining throughput


def throughput(
    backbone_name: str, amp: bool, gpu_augment: bool, sizes: Sizes, device: torch.device
) -> dict[str, Any]:
    """Images per second of SimCLR pretraining steps (LARS) at batch ``sizes.batch_size``; with ``gpu_augment``
    each step makes both views from uint8 images on the device, without it the views are ready-made."""
    torch.manual_seed(0)
    task = channels_last(pretext_task(backbone_name).to(device), amp).train()
    named = [(n, p) for n, p in task.named_parameters() if not n.startswith("target.")]
    optimizer = LARS(lars_groups(named, True), lr=0.1, momentum=0.9, weight_decay=1e-6)
    size, batch = sizes.image_size, sizes.batch_size
    raw = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    augment = TwoViewAugment(size, 3, IMAGENET_MEAN, IMAGENET_STD, reference_crop=True).to(device)
    ready = augment(raw)
    precision = "bf16" if amp else "fp32"

    def step() -> None:
        view1, view2 = augment(raw) if gpu_augment else ready
        with autocast(device, precision):
            loss = task(view1, view2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(sizes.warmup_steps):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(sizes.timed_steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "backbone": backbone_name,
        "amp": f"{precision}{' + channels_last' if amp else ''}",
        "gpu_augment": gpu_augment,
        "images_per_second": sizes.timed_steps * batch / seconds,
        "seconds_per_step": seconds / sizes.timed_steps,
    }


# ---------------------------------------------------------------------------------------------------------
# 3. Seconds per upper phase


UPPER_VARIANTS = (
    ("reuse", "phase", "fp32"),
    ("reuse", "step", "fp32"),
    ("recompute", "phase", "fp32"),
    ("forward-over-reverse", "phase", "fp32"),
    ("reuse", "phase", "bf16"),
)


def upper_phase_seconds(
    backbone_name: str,
    mode: str,
    scope: str,
    hvp_precision: str,
    sizes: Sizes,
    device: torch.device,
    *,
    vit: VitPhase | None = None,
) -> dict[str, Any]:
    """One upper phase (``upper_steps`` steps, ``solver_iterations`` layerwise CG iterations each) of BiSSL with
    Hessian and downstream batches of ``sizes.batch_size``; downstream passes in bf16 on a GPU. With ``vit`` the
    lower model is DINO on that ViT, at its image size and batch (``backbone_name`` is then only a label)."""
    torch.manual_seed(0)
    if vit is not None:
        lower = vit_dino_task(vit).to(device)  # one convolution: channels_last gains nothing
        size, batch = vit.image_size, vit.batch_size
    else:
        lower = channels_last(pretext_task(backbone_name).to(device), device.type == "cuda")
        size, batch = sizes.image_size, sizes.batch_size
    upper_backbone = initial_models(lower, None)
    head = nn.Linear(feature_dim(upper_backbone), 10).to(device)
    augment = TwoViewAugment(size, 3, IMAGENET_MEAN, IMAGENET_STD).to(device)
    hessian_views = augment(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device))
    downstream = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    settings = BilevelConfig(
        alternations=1,
        lower_steps=1,
        upper_steps=sizes.upper_steps,
        solver_iterations=sizes.solver_iterations,
        hvp_mode=mode,  # type: ignore[arg-type]
        hvp_scope=scope,  # type: ignore[arg-type]
        lower_batch_size=batch,
        upper_batch_size=batch,
    )
    precision = "bf16" if device.type == "cuda" else "fp32"
    trainer = BilevelTrainer(
        lower,
        upper_backbone,
        head,
        nn.functional.cross_entropy,
        lambda: hessian_views,
        lambda: (downstream, labels),
        settings,
        precision=precision,
        hvp_precision=hvp_precision,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.settings = dataclasses.replace(settings, upper_steps=1)
    trainer.upper_phase()  # warm-up step: kernels chosen, allocator filled
    trainer.settings = settings
    synchronize(device)
    started = time.perf_counter()
    record = trainer.upper_phase()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "backbone": backbone_name,
        "hvp_mode": mode,
        "scope": scope,
        "hvp_precision": hvp_precision,
        "seconds_per_upper_phase": seconds,
        "solver_residual_last": record["solver_residual_last"],
        "peak_gib": peak,
    }


# ---------------------------------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.2f}"
        return str(value)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def _guarded(
    budget: Budget, needed: float, what: str, run: Callable[[], dict[str, Any]]
) -> dict[str, Any] | None:
    """Run one measurement unless the budget is short; an out-of-memory error is reported, not raised."""
    if budget.left() < needed:
        print(f"  skipped {what}: time budget spent", flush=True)
        return None
    try:
        result = run()
    except torch.OutOfMemoryError:
        print(f"  {what}: out of GPU memory", flush=True)
        torch.cuda.empty_cache()
        return None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the script itself")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all measurements")
    parser.add_argument("--json", default=os.environ.get("GPU_CHECK_JSON"), help="also write results here")
    args = parser.parse_args(argv)
    if args.smoke:
        device, sizes = torch.device("cpu"), SMOKE_SIZES
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device; run it on a machine with a GPU (or pass --smoke)")
            return 0
        device, sizes = torch.device("cuda"), GPU_SIZES
        torch.backends.cudnn.benchmark = True
    budget = Budget(args.budget)
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "smoke": args.smoke}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {"gpu": properties.name, "memory_gib": properties.total_memory / 2**30}
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    print("gpu_check:", json.dumps(info), flush=True)

    print("\n[1/3] HVP modes against finite differences on the device", flush=True)
    checks = hvp_check(device)
    print(_table(checks, ["check", "rel_error", "ok"]), flush=True)

    print(
        f"\n[2/3] pretraining throughput: SimCLR, {sizes.image_size} px, batch {sizes.batch_size}", flush=True
    )
    speed: list[dict[str, Any]] = []
    for name in sizes.backbones:
        for amp in (False, True):
            for gpu_augment in (False, True):
                what = f"{name} amp={amp} gpu_augment={gpu_augment}"
                row = _guarded(budget, 30.0, what, partial(throughput, name, amp, gpu_augment, sizes, device))
                if row is not None:
                    speed.append(row)
                    print(f"  {what}: {row['images_per_second']:.0f} images/s", flush=True)
    print(
        _table(speed, ["backbone", "amp", "gpu_augment", "images_per_second", "seconds_per_step"]), flush=True
    )

    print(
        f"\n[3/3] seconds per upper phase: {sizes.upper_steps} steps x {sizes.solver_iterations} CG iterations, "
        f"Hessian and downstream batches of {sizes.batch_size} (the ViT: {sizes.vit.batch_size})",
        flush=True,
    )
    upper: list[dict[str, Any]] = []
    vit = sizes.vit
    what = f"{vit.label()} reuse/phase/fp32, batch {vit.batch_size}"
    row = _guarded(
        budget,
        60.0 if device.type == "cuda" else 5.0,
        what,
        partial(upper_phase_seconds, vit.label(), "reuse", "phase", "fp32", sizes, device, vit=vit),
    )
    if row is not None:
        upper.append(row)
        print(f"  {what}: {row['seconds_per_upper_phase']:.2f} s", flush=True)
    for name in sizes.backbones:
        for mode, scope, hvp_precision in UPPER_VARIANTS:
            what = f"{name} {mode}/{scope}/{hvp_precision}"
            row = _guarded(
                budget,
                45.0 if name == "resnet50" else 20.0,
                what,
                partial(upper_phase_seconds, name, mode, scope, hvp_precision, sizes, device),
            )
            if row is not None:
                upper.append(row)
                print(f"  {what}: {row['seconds_per_upper_phase']:.2f} s", flush=True)
    columns = ["backbone", "hvp_mode", "scope", "hvp_precision", "seconds_per_upper_phase", "peak_gib"]
    print(_table(upper, columns), flush=True)

    results = {"info": info, "hvp_checks": checks, "throughput": speed, "upper_phase": upper}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = [row["check"] for row in checks if not row["ok"]]
    if failed:
        print("gpu_check: HVP checks FAILED: " + "; ".join(failed))
        return 1
    print("gpu_check: HVP checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
