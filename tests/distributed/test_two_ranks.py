"""Two gloo processes against one process on the concatenated batch (float64): the losses and gradients of every
pretext method (SimCLR, BYOL, VICReg, Barlow Twins, MoCo v3, DINO, with DINO's centre after a step),
Hessian-vector products, upper gradients and a whole alternation, with SyncBatchNorm or without
BatchNorm; one flat all-reduce per CG iteration; the agreements between ranks; and the search protocol in
which rank 0 drives Optuna and every rank fine-tunes each trial.

One spawn runs every distributed case (starting processes costs more than the cases) and writes the
results; the tests compare them with single-process references computed here. A case that raises records
its error instead of its result, so only its own tests fail."""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from bissl import distributed
from bissl.bilevel.hvp import flat_parameters, hessian_vector_operator
from bissl.bilevel.implicit import inverse_jacobian_product, upper_gradients
from bissl.bilevel.trainer import BilevelTrainer, initial_models, solver_with_reduced_rhs
from bissl.config import BilevelConfig, Config, PretextConfig, SearchConfig
from bissl.errors import BisslError
from bissl.pretext import PRETEXT_TASKS, PretextTask, build_pretext

DTYPE = torch.float64
WORLD = 2
LOCAL = 4  # samples per rank; the single process sees WORLD * LOCAL
CG_ITERATIONS = 3
TOLERANCE = 1e-6  # float64: the ranks agree with one process to about 1e-12
CASES = [(method, batchnorm) for method in PRETEXT_TASKS for batchnorm in (True, False)]
HVP_MODES = ("reuse", "recompute", "forward-over-reverse")


class TinyNet(nn.Module):
    """conv-(BN)-tanh-pool-linear on 1x4x4 images."""

    def __init__(self, batchnorm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.norm: nn.Module = nn.BatchNorm2d(3) if batchnorm else nn.Identity()
        self.fc = nn.Linear(12, 4)
        self.feature_dim = 4

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(torch.tanh(self.norm(self.conv(x))), 2)
        return torch.tanh(self.fc(x.flatten(1)))


def build_task(method: str, batchnorm: bool) -> PretextTask:
    """The same initial pretext task in every process; its BatchNorm layers (if any) are SyncBatchNorm."""
    torch.manual_seed(11)
    hidden = [5] if batchnorm else []
    config = PretextConfig(
        method=method,  # type: ignore[arg-type]
        projector_hidden=hidden,
        projector_dim=3,
        predictor_hidden=hidden,
        temperature=0.5,
        moco_temperature=0.5,
        dino_out_dim=5,
        dino_teacher_temperature=0.07,
    )
    task = build_pretext(config, TinyNet(batchnorm), 4)
    target = getattr(task, "target", None)
    if target is not None:
        with torch.no_grad():  # a target that differs from the online network, so the loss is not trivial
            for p in target.parameters():
                p.add_(0.1 * torch.randn_like(p))
    center = getattr(task, "center", None)
    if center is not None:  # DINO: a centre away from 0, so the centring takes part
        with torch.no_grad():
            center.copy_(0.3 * torch.randn_like(center))
    distributed.convert_sync_batchnorm(task)
    return task.to(DTYPE)


def views(seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(WORLD * LOCAL, 1, 4, 4, generator=generator, dtype=DTYPE)
    return first, first + 0.3 * torch.randn(first.shape, generator=generator, dtype=DTYPE)


def labelled(seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(WORLD * LOCAL, 1, 4, 4, generator=generator, dtype=DTYPE)
    return images, torch.randint(0, 3, (WORLD * LOCAL,), generator=generator)


def shard(batch: tuple[Tensor, Tensor], rank: int | None) -> tuple[Tensor, Tensor]:
    """This rank's rows of a global batch (all of it for ``rank=None``)."""
    if rank is None:
        return batch
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    return batch[0][rows], batch[1][rows]


def probe_vector(task: PretextTask) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(5)
    return tuple(
        torch.randn(p.shape, generator=generator, dtype=DTYPE) for p in flat_parameters(task.backbone)
    )


def upper_parts(task: PretextTask) -> tuple[nn.Module, nn.Module]:
    """θ_D (a perturbed copy of θ_P, so the two terms differ) and φ_D."""
    upper_backbone = initial_models(task, None)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in upper_backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    head = nn.Linear(4, 3).to(DTYPE)
    return upper_backbone, head


def settings() -> BilevelConfig:
    return BilevelConfig(
        alternations=1,
        lower_steps=2,
        upper_steps=2,
        solver_iterations=CG_ITERATIONS,
        lower_batch_size=LOCAL,
        upper_batch_size=LOCAL,
        lower_warmup_steps=1,
        lower_lr=0.5,
        upper_lr=0.05,
        gamma=0.7,
        lam=0.05,
        damping=0.5,
        clip_grad=10.0,
    )


def source(batches: list[tuple[Tensor, Tensor]]) -> Callable[[], tuple[Tensor, Tensor]]:
    iterator: Iterator[tuple[Tensor, Tensor]] = iter(batches)
    return lambda: next(iterator)


def centre(task: PretextTask) -> list[Tensor]:
    """DINO's centre (a buffer that moves after each step); nothing for the other methods."""
    center = getattr(task, "center", None)
    return [] if center is None else [center.detach().clone()]


def loss_and_gradients(method: str, batchnorm: bool, rank: int | None) -> dict[str, Any]:
    """Pretext loss and parameter gradients; distributed: mean loss over ranks, DDP-averaged gradients; then
    the hook after a step (DINO's centre update, all-reduced)."""
    task = build_task(method, batchnorm)
    model: nn.Module = task
    if rank is not None:
        model = nn.parallel.DistributedDataParallel(task)
    loss = model(*shard(views(1), rank))
    loss.backward()
    value = loss.detach().clone()
    if rank is not None:
        dist.all_reduce(value)
        value /= WORLD
    grads = [p.grad.clone() for p in task.trainable_parameters()]
    before = centre(task)
    task.after_step(0.5)
    return {"loss": value, "grads": grads, "centre_before": before, "centre": centre(task)}


def hessian_products(method: str, batchnorm: bool, rank: int | None) -> dict[str, Any]:
    """H v of the pretext loss w.r.t. the backbone in every HVP mode (distributed: averaged over ranks)."""
    task = build_task(method, batchnorm)
    task.train()
    hessian_views = shard(views(2), rank)
    out: dict[str, Any] = {}
    for mode in HVP_MODES:
        operator = hessian_vector_operator(
            lambda: task(*hessian_views), flat_parameters(task.backbone), mode=mode, modules=[task]
        )
        product = distributed.all_reduce_flat(operator.matvec(probe_vector(task)))
        operator.release()
        out[mode] = list(product)
    return out


def implicit_gradients(method: str, batchnorm: bool, rank: int | None) -> dict[str, Any]:
    """The upper gradients of one step; distributed as the trainer runs them (reduced right-hand side, each
    HVP and the result reduced), with the all-reduce calls counted."""
    task = build_task(method, batchnorm)
    task.train()
    upper_backbone, head = upper_parts(task)
    hessian_views = shard(views(2), rank)
    images, targets = shard(labelled(3), rank)
    operator = hessian_vector_operator(lambda: task(*hessian_views), flat_parameters(task.backbone))
    reduce = distributed.all_reduce_flat if rank is not None else None
    solver: Any = "cg" if reduce is None else solver_with_reduced_rhs("cg", reduce)
    calls = {"count": 0}
    original = dist.all_reduce

    def counting_all_reduce(*args: Any, **kwargs: Any) -> Any:
        calls["count"] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting_all_reduce  # type: ignore[assignment]
    try:
        result = upper_gradients(
            hvp_operator_or_matvec=operator,
            lower_backbone=task.backbone,
            upper_backbone=upper_backbone,
            upper_head=head,
            downstream_loss_fn=lambda b, h: F.cross_entropy(h(b(images)), targets),
            lam=0.05,
            damping=0.5,
            gamma=0.7,
            solver=solver,
            solver_options={"iterations": CG_ITERATIONS},
            reduce=reduce,
        )
        step_calls = calls["count"]
        calls["count"] = 0
        inverse_jacobian_product(
            operator.matvec,
            probe_vector(task),
            lam=0.05,
            damping=0.5,
            solver="cg",
            reduce=reduce,
            iterations=CG_ITERATIONS,
        )
        solve_calls = calls["count"]
    finally:
        dist.all_reduce = original  # type: ignore[assignment]
    return {
        "backbone": list(result.backbone),
        "head": list(result.head),
        "step_all_reduces": step_calls,
        "solve_all_reduces": solve_calls,
    }


def alternation(method: str, batchnorm: bool, rank: int | None) -> dict[str, Any]:
    """Every parameter after one alternation of the trainer (distributed: DDP lower phase, reduced HVPs)."""
    task = build_task(method, batchnorm)
    upper_backbone, head = upper_parts(task)
    s = settings()
    lower_data = [shard(views(10 + i), rank) for i in range(s.lower_steps + 1)]
    upper_data = [shard(labelled(20 + i), rank) for i in range(s.upper_steps)]
    lower_model = nn.parallel.DistributedDataParallel(task) if rank is not None else None
    trainer = BilevelTrainer(
        task,
        upper_backbone,
        head,
        F.cross_entropy,
        source(lower_data),
        source(upper_data),
        s,
        lars_eta=0.02,
        reduce=distributed.all_reduce_flat if rank is not None else None,
        lower_model=lower_model,
    )
    trainer.alternate()
    return {
        "centre": centre(task),
        "lower": [p.detach().clone() for p in task.trainable_parameters()],
        "upper_backbone": [p.detach().clone() for p in upper_backbone.parameters()],
        "head": [p.detach().clone() for p in head.parameters()],
    }


SCENARIOS: dict[str, Callable[[str, bool, int | None], dict[str, Any]]] = {
    "loss": loss_and_gradients,
    "hvp": hessian_products,
    "upper": implicit_gradients,
    "alternation": alternation,
}


def batchnorm_statistics(rank: int | None) -> dict[str, Any]:
    """Output and running statistics of a (Sync)BatchNorm layer after one train-mode forward, and its
    eval-mode output afterwards (which uses the running statistics, no communication)."""
    torch.manual_seed(4)
    layer = distributed.convert_sync_batchnorm(nn.BatchNorm2d(3, momentum=0.3).to(DTYPE))
    images = 2 + 3 * torch.randn(WORLD * LOCAL, 3, 2, 2, dtype=DTYPE)
    probe = torch.randn(5, 3, 2, 2, dtype=DTYPE)
    mine = images if rank is None else images[rank * LOCAL : (rank + 1) * LOCAL]
    output = layer(mine)
    layer.eval()
    return {
        "output": output.detach(),
        "running": [layer.running_mean.clone(), layer.running_var.clone()],
        "eval": layer(probe).detach(),
    }


class _Stop:
    def __init__(self, signum: int | None) -> None:
        self.signum = signum


def agreements(rank: int) -> dict[str, Any]:
    """What the helpers that keep ranks in lockstep return on each rank."""
    stop = _Stop(15 if rank == 1 else None)
    quiet = _Stop(None)
    parameter = nn.Parameter(torch.zeros(2, dtype=DTYPE))
    parameter.grad = torch.full((2,), float(rank), dtype=DTYPE)
    unused = nn.Parameter(torch.zeros(1, dtype=DTYPE))
    distributed.average_gradients([parameter, unused])
    distributed.reseed_per_rank(7)
    first = torch.rand(3)
    distributed.reseed_per_rank(7)
    return {
        "one_nan": float(distributed.agree_finite(float("nan") if rank == 1 else 1.0)),
        "all_finite": float(distributed.agree_finite(torch.tensor(float(rank + 1)))),
        "stop": distributed.agree_stop(stop),
        "stop_signum": stop.signum,
        "no_stop": distributed.agree_stop(quiet),
        "per_rank": distributed.per_rank({"rank": rank}),
        "own": distributed.own_entry(distributed.per_rank({"rank": rank})),
        "means": distributed.average_scalars([float(rank), 2.0 * rank]),
        "grad": parameter.grad.clone(),
        "unused_grad": unused.grad.clone() if unused.grad is not None else None,
        "random": first,
        "random_again": torch.rand(3),
    }


def search_protocol(rank: int, out: Path) -> dict[str, Any]:
    """``run_search`` with a fine-tuning stand-in that checks every rank runs the same trial: the trials each
    rank ran and the result it returned; then a search in which every trial diverges."""
    from bissl.train import search

    calls: list[tuple[float, float]] = []

    def fine_tune(config: Config, run: Any, **kwargs: Any) -> dict[str, Any]:
        setting = (float(kwargs["lr"]), float(kwargs["weight_decay"]))
        if len({tuple(s) for s in distributed.per_rank(setting)}) != 1:
            raise AssertionError("ranks fine-tune different settings")
        calls.append(setting)
        value = float("nan") if config.search.study_name == "diverging" else 100 * setting[0]
        return {"best": {"val_top1": value, "epoch": 1}, "last": {}, "seconds": 0.0, "primary_metric": "top1"}

    search.fit.run_finetune = fine_tune  # type: ignore[assignment]
    config = Config(search=SearchConfig(trials=3, epochs=1, study_name="protocol"))
    result = search.run_search(config, out / "search")
    trials = list(calls)
    diverging = Config(search=SearchConfig(trials=2, epochs=1, study_name="diverging"))
    try:
        search.run_search(diverging, out / "diverging")
        error = ""
    except BisslError as raised:
        error = str(raised)
    return {
        "calls": trials,
        "diverging_calls": calls[len(trials) :],
        "best": result["best"],
        "finished": result["finished"],
        "error": error,
    }


def _attempt(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    try:
        return function(*args)
    except Exception:
        return {"failed": traceback.format_exc()}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), BISSL_QUIET="1")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        results: dict[str, Any] = {}
        for name, scenario in SCENARIOS.items():
            for method, batchnorm in CASES:
                results[f"{name}/{method}/{batchnorm}"] = _attempt(scenario, method, batchnorm, rank)
        results["batchnorm"] = _attempt(batchnorm_statistics, rank)
        results["agreements"] = _attempt(agreements, rank)
        results["search"] = _attempt(search_protocol, rank, Path(out))
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The results of every case on each of the two ranks."""
    out = tmp_path_factory.mktemp("ranks")
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def result_of(ranks: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One case's result on each rank; a case that raised fails the test with its traceback."""
    for rank, results in enumerate(ranks):
        if "failed" in results[key]:
            pytest.fail(f"rank {rank}, case {key}:\n{results[key]['failed']}")
    return [results[key] for results in ranks]


def relative(a: list[Tensor], b: list[Tensor]) -> float:
    flat_a = torch.cat([t.reshape(-1) for t in a])
    flat_b = torch.cat([t.reshape(-1) for t in b])
    return float((flat_a - flat_b).norm() / flat_b.norm())


CASE_IDS = [f"{m}-{'syncbn' if bn else 'nobn'}" for m, bn in CASES]


@pytest.mark.parametrize(("method", "batchnorm"), CASES, ids=CASE_IDS)
def test_loss_and_gradients_equal_single_process(
    ranks: list[dict[str, Any]], method: str, batchnorm: bool
) -> None:
    reference = loss_and_gradients(method, batchnorm, None)
    for got in result_of(ranks, f"loss/{method}/{batchnorm}"):
        assert abs(float(got["loss"]) - float(reference["loss"])) < TOLERANCE * abs(float(reference["loss"]))
        assert relative(got["grads"], reference["grads"]) < TOLERANCE
        assert len(got["centre"]) == (method == "dino")
        if got["centre"]:  # the centre moved, by the mean of the teacher's outputs over the global batch
            assert relative(reference["centre"], reference["centre_before"]) > 1e-3
            assert relative(got["centre"], reference["centre"]) < TOLERANCE


@pytest.mark.parametrize(("method", "batchnorm"), CASES, ids=CASE_IDS)
def test_averaged_hvp_equals_single_process_hvp(
    ranks: list[dict[str, Any]], method: str, batchnorm: bool
) -> None:
    reference = hessian_products(method, batchnorm, None)
    for mode in HVP_MODES:
        assert relative(reference[mode], reference["reuse"]) < 1e-10
        for got in result_of(ranks, f"hvp/{method}/{batchnorm}"):
            assert relative(got[mode], reference[mode]) < TOLERANCE, mode


@pytest.mark.parametrize(("method", "batchnorm"), CASES, ids=CASE_IDS)
def test_upper_gradients_equal_single_process(
    ranks: list[dict[str, Any]], method: str, batchnorm: bool
) -> None:
    reference = implicit_gradients(method, batchnorm, None)
    for got in result_of(ranks, f"upper/{method}/{batchnorm}"):
        assert relative(got["backbone"], reference["backbone"]) < TOLERANCE
        assert relative(got["head"], reference["head"]) < TOLERANCE


@pytest.mark.parametrize(("method", "batchnorm"), CASES, ids=CASE_IDS)
def test_one_flat_all_reduce_per_cg_iteration(
    ranks: list[dict[str, Any]], method: str, batchnorm: bool
) -> None:
    for got in result_of(ranks, f"upper/{method}/{batchnorm}"):
        assert got["solve_all_reduces"] == CG_ITERATIONS
        # one more for the right-hand side and one for the final gradients of the upper step
        assert got["step_all_reduces"] == CG_ITERATIONS + 2


@pytest.mark.parametrize(("method", "batchnorm"), CASES, ids=CASE_IDS)
def test_parameters_after_one_alternation_equal_single_process(
    ranks: list[dict[str, Any]], method: str, batchnorm: bool
) -> None:
    reference = alternation(method, batchnorm, None)
    start = build_task(method, batchnorm)
    assert relative(reference["lower"], [p.detach() for p in start.trainable_parameters()]) > 1e-3
    for got in result_of(ranks, f"alternation/{method}/{batchnorm}"):
        for part in ("lower", "upper_backbone", "head"):
            assert relative(got[part], reference[part]) < TOLERANCE, part
        if reference["centre"]:
            assert relative(got["centre"], reference["centre"]) < TOLERANCE


def test_sync_batchnorm_matches_batchnorm_on_the_whole_batch(ranks: list[dict[str, Any]]) -> None:
    reference = batchnorm_statistics(None)
    for rank, got in enumerate(result_of(ranks, "batchnorm")):
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        assert relative([got["output"]], [reference["output"][rows]]) < 1e-12
        assert relative(got["running"], reference["running"]) < 1e-12
        assert relative([got["eval"]], [reference["eval"]]) < 1e-12
    assert not torch.allclose(reference["running"][1], torch.ones(3, dtype=DTYPE))


def test_ranks_agree_on_skips_stops_and_averages(ranks: list[dict[str, Any]]) -> None:
    results = result_of(ranks, "agreements")
    for rank, got in enumerate(results):
        assert got["one_nan"] != got["one_nan"]  # NaN on both ranks, though only rank 1 saw one
        assert got["all_finite"] == rank + 1
        assert got["stop"] is True and got["stop_signum"] == 15
        assert got["no_stop"] is False
        assert got["per_rank"] == [{"rank": 0}, {"rank": 1}]
        assert got["own"] == {"rank": rank}
        assert got["means"] == [0.5, 1.0]
        assert torch.equal(got["grad"], torch.full((2,), 0.5, dtype=DTYPE))
        assert torch.equal(got["unused_grad"], torch.zeros(1, dtype=DTYPE))
        assert torch.equal(got["random"], got["random_again"])
    assert not torch.equal(results[0]["random"], results[1]["random"])


def test_search_runs_every_trial_on_every_rank_and_shares_the_result(ranks: list[dict[str, Any]]) -> None:
    leader, follower = result_of(ranks, "search")
    assert len(leader["calls"]) == 3
    assert follower["calls"] == leader["calls"]
    assert follower["best"] == leader["best"]
    assert leader["finished"] == 3
    assert leader["best"]["lr"] == max(lr for lr, _ in leader["calls"])
    assert len(leader["diverging_calls"]) == 2
    assert follower["diverging_calls"] == leader["diverging_calls"]
    assert "no search trial reached a finite validation score" in leader["error"]
    assert follower["error"] == leader["error"]
