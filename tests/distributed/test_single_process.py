"""The distributed helpers in one process: SyncBatchNorm is BatchNorm, conversion keeps every tensor,
collectives are no-ops; and the rank-sharded batch stream against one process's stream, with resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from bissl import distributed
from bissl.bilevel.hvp import flat_parameters, hessian_vector_operator
from bissl.data.registry import TensorDataset
from bissl.data.stream import BatchStream
from bissl.pretext import BYOL

DTYPE = torch.float64


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_sync_batchnorm_is_batchnorm_in_one_process(momentum: float | None, affine: bool) -> None:
    plain = nn.BatchNorm2d(3, momentum=momentum, affine=affine).to(DTYPE)
    if affine:
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5)
            plain.bias.uniform_(-1, 1)
    synced = distributed.convert_sync_batchnorm(copy.deepcopy(plain))
    assert isinstance(synced, distributed.SyncBatchNorm)
    for _ in range(3):
        images = 1 + 2 * torch.randn(6, 3, 4, 4, dtype=DTYPE)
        assert torch.equal(synced(images), plain(images))
    assert torch.equal(synced.running_mean, plain.running_mean)
    assert torch.equal(synced.running_var, plain.running_var)
    assert int(synced.num_batches_tracked) == 3
    synced.eval()
    plain.eval()
    probe = torch.randn(2, 3, 4, 4, dtype=DTYPE)
    assert torch.equal(synced(probe), plain(probe))


def test_conversion_keeps_parameters_buffers_and_state_dict() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4, 4)
    )
    task = BYOL(backbone, 4, projector_hidden=(5,), projector_dim=3, predictor_hidden=(5,))
    parameters = {name: p for name, p in task.named_parameters()}
    buffers = {name: b for name, b in task.named_buffers()}
    keys = list(task.state_dict())
    assert distributed.convert_sync_batchnorm(task) is task
    layers = [m for m in task.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(layers) == 5  # backbone, projector, predictor, and the target's backbone and projector
    assert all(isinstance(m, distributed.SyncBatchNorm) for m in layers)
    assert all(p is parameters[name] for name, p in task.named_parameters())
    assert all(b is buffers[name] for name, b in task.named_buffers())
    assert list(task.state_dict()) == keys
    fresh = nn.BatchNorm2d(4)
    fresh.load_state_dict(backbone[1].state_dict())


def test_hvp_through_sync_batchnorm_with_untracked_statistics() -> None:
    """HVPs switch running statistics off (buffers set to None); SyncBatchNorm must accept that."""
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).to(DTYPE)
    synced = distributed.convert_sync_batchnorm(copy.deepcopy(plain))
    inputs = torch.randn(8, 3, dtype=DTYPE)
    vector = tuple(torch.randn_like(p) for p in flat_parameters(plain))
    products = []
    for model in (plain, synced):
        before = model[1].running_mean.clone()
        operator = hessian_vector_operator(
            lambda model=model: model(inputs).pow(2).mean(), flat_parameters(model), modules=[model]
        )
        products.append(operator.matvec(vector))
        assert torch.equal(model[1].running_mean, before)
    for a, b in zip(*products):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert any(float(p.abs().max()) > 0 for p in products[0])


def test_collectives_are_no_ops_in_one_process() -> None:
    tensors = (torch.ones(2), torch.zeros(3))
    assert distributed.all_reduce_flat(tensors) == tensors
    z = torch.randn(4, 2)
    assert distributed.gather_with_grad(z) is z
    assert float(distributed.agree_finite(2.5)) == 2.5
    assert distributed.per_rank({"a": 1}) == {"a": 1}
    assert distributed.own_entry({"a": 1}) == {"a": 1}
    assert distributed.average_scalars([1.0, 3.0]) == [1.0, 3.0]

    class Flag:
        signum: int | None = None

    flag = Flag()
    assert distributed.agree_stop(flag) is False
    flag.signum = 15
    assert distributed.agree_stop(flag) is True
    state = torch.get_rng_state()
    distributed.reseed_per_rank(3)
    assert torch.equal(torch.get_rng_state(), state)
    parameter = nn.Parameter(torch.zeros(2))
    parameter.grad = torch.ones(2)
    distributed.average_gradients([parameter])
    assert torch.equal(parameter.grad, torch.ones(2))


def numbered(count: int) -> TensorDataset:
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2).contiguous()
    return TensorDataset(images, torch.arange(count), num_classes=count, name="numbered")


def test_rank_shards_rebuild_the_single_process_stream_over_epochs_and_resume() -> None:
    """Every epoch reshuffles the same way on every rank; a rank resumed from rank 0's saved state continues
    exactly where it would have."""
    dataset, world, local = numbered(26), 2, 3
    single = BatchStream(dataset, world * local, seed=4)
    shards = [BatchStream(dataset, local, seed=4, rank=r, world_size=world) for r in range(world)]
    epochs: list[list[int]] = [[] for _ in range(3)]
    for step in range(3 * single.batches_per_epoch):
        whole = next(single)[1].tolist()
        assert [i for s in shards for i in next(s)[1].tolist()] == whole
        epochs[step // single.batches_per_epoch] += whole
    assert epochs[0] != epochs[1] != epochs[2]
    saved = json.loads(json.dumps(shards[0].state_dict()))
    resumed = BatchStream(dataset, local, seed=0, rank=1, world_size=world)
    resumed.load_state_dict(saved)
    for _ in range(5):
        assert next(resumed)[1].tolist() == next(shards[1])[1].tolist()
