"""Pretraining throughput: batched view augmentation on the training device vs per-sample PIL in workers.

Both arms train the demo configuration (SmallResNet width 16, blocks (1, 1, 1), SimCLR projector 256-256-256,
NT-Xent, SGD) on Fashion-MNIST at 28 px with batch 256, in one process run. The PIL arm is the reference's
way: torchvision transforms per image inside DataLoader workers. Prints images/s (median over timed windows
after a warm-up) and each arm's speed relative to the batched one.

    python benchmarks/augment_throughput.py --workers 0 1 2 --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Generator, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bissl.data import BatchStream, TensorDataset, TwoViewAugment, load_dataset, reference_pil_transform
from bissl.data.augment import PilTwoViews
from bissl.models import build_backbone, feature_dim, mlp

ViewBatch = tuple[torch.Tensor, torch.Tensor]
ViewStream = Generator[ViewBatch, None, None]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the other 2N - 1 embeddings."""
    embeddings = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = embeddings @ embeddings.T / temperature
    logits.fill_diagonal_(float("-inf"))
    count = z1.shape[0]
    targets = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(z1.device)
    return F.cross_entropy(logits, targets)


class PilViewsDataset(Dataset[ViewBatch]):
    """Per-sample path: uint8 tensor image -> PIL image -> two views through torchvision transforms."""

    def __init__(self, dataset: TensorDataset, transform: PilTwoViews) -> None:
        self.images = dataset.images
        self.transform = transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> ViewBatch:
        return self.transform(Image.fromarray(self.images[index, 0].numpy()))


def batched_views(dataset: TensorDataset, batch_size: int, device: torch.device) -> ViewStream:
    """Batched path: uint8 batches from a stream, augmented on ``device`` by TwoViewAugment."""
    augment = TwoViewAugment(dataset.image_size, dataset.channels, dataset.mean, dataset.std)
    for images, _ in BatchStream(dataset, batch_size, seed=0, device=device):
        yield augment(images)


def pil_views(dataset: TensorDataset, batch_size: int, workers: int) -> ViewStream:
    """Per-sample path in ``workers`` DataLoader worker processes (0: in the training process)."""
    transform = reference_pil_transform(dataset.image_size, dataset.channels, dataset.mean, dataset.std)
    loader = DataLoader(
        PilViewsDataset(dataset, transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    while True:
        yield from loader


def measure(
    views: Iterator[ViewBatch],
    device: torch.device,
    batch_size: int,
    warmup: int,
    windows: int,
    steps: int,
) -> list[float]:
    """Images per second of each timed window of ``steps`` SGD steps, after ``warmup`` steps."""
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", in_channels=1, width=16, blocks=(1, 1, 1))
    model = nn.Sequential(backbone, mlp(feature_dim(backbone), (256, 256), 256)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        view1, view2 = next(views)
        view1, view2 = view1.to(device, non_blocking=True), view2.to(device, non_blocking=True)
        loss = nt_xent(model(view1), model(view2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(windows):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(batch_size * steps / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts of the PIL arm"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads of the trainer")
    parser.add_argument("--rounds", type=int, default=2, help="passes over all arms, to spread load drift")
    parser.add_argument("--warmup", type=int, default=2, help="untimed SGD steps before each arm's windows")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per arm and round")
    parser.add_argument("--steps", type=int, default=3, help="SGD steps per timed window")
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = load_dataset("fashion-mnist", "train")

    arms: list[tuple[str, int, Callable[[], ViewStream]]] = []
    for threads in args.threads:
        batched = partial(batched_views, dataset, args.batch_size, device)
        arms.append((f"batched TwoViewAugment on {device.type}", threads, batched))
        for workers in args.workers:
            per_sample = partial(pil_views, dataset, args.batch_size, workers)
            arms.append((f"per-sample PIL, {workers} DataLoader workers", threads, per_sample))
    print(
        f"device={device} cpus={os.cpu_count()} batch={args.batch_size} rounds={args.rounds} "
        f"warmup={args.warmup} windows={args.windows}x{args.steps} steps torch={torch.__version__}"
    )
    rates: dict[int, list[float]] = {index: [] for index in range(len(arms))}
    for _ in range(args.rounds):
        for index, (_, threads, make_views) in enumerate(arms):
            torch.set_num_threads(threads)
            views = make_views()
            try:
                rates[index] += measure(views, device, args.batch_size, args.warmup, args.windows, args.steps)
            finally:
                views.close()
    medians = [statistics.median(rates[index]) for index in range(len(arms))]
    best_batched = max(m for (name, _, _), m in zip(arms, medians) if name.startswith("batched"))
    print(f"| {'pipeline':<40} | trainer threads | images/s (median) | {'min':>5} | best batched / this |")
    print(f"|{'-' * 42}|{'-' * 17}|{'-' * 19}|{'-' * 7}|{'-' * 21}|")
    for index, (name, threads, _) in enumerate(arms):
        median, low = medians[index], min(rates[index])
        print(
            f"| {name:<40} | {threads:>15} | {median:>17.0f} | {low:>5.0f} | {best_batched / median:>18.2f}x |"
        )


if __name__ == "__main__":
    main()
