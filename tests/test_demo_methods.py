"""The demo with every pretext method: `bissl demo [--quick] pretext.method=M` (docs/pretext.md).

Fast: each method's demo and quick-demo configs validate, differ from the shipped file only in the method, and
build that method's task on demo-sized images with a finite loss. Slow (`make test-slow`): the quick demo runs
end to end for each method and writes results.json with finite numbers for both arms.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bissl import cli
from bissl.config import flatten, load_config
from bissl.data.registry import dataset_info
from bissl.pretext import PRETEXT_TASKS
from bissl.train.model_factory import make_pretext


@pytest.mark.parametrize("name", ["demo", "demo-quick"])
def test_every_method_validates_and_builds_through_the_demo_configs(name: str) -> None:
    shipped = flatten(load_config(name))
    for method in PRETEXT_TASKS:
        config = load_config(name, [f"pretext.method={method}"])
        changed = {key for key, value in flatten(config).items() if shipped[key] != value}
        assert changed <= {"pretext.method"}, (method, changed)
        task = make_pretext(config, channels=1).train()
        size = config.data.image_size
        images = torch.rand(8, 1, size, size)
        loss = task(images, images.flip(-1))
        assert torch.isfinite(loss), method
        loss.backward()
        assert all(p.grad is not None for p in task.backbone.parameters()), method


def _finite_numbers(value: object) -> list[float]:
    """Every number in a JSON value (bools excluded)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [number for item in value.values() for number in _finite_numbers(item)]
    if isinstance(value, list):
        return [number for item in value for number in _finite_numbers(item)]
    return []


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(
    not dataset_info("fashion-mnist").is_present(), reason="Fashion-MNIST (the demo's pretext data) is absent"
)
@pytest.mark.parametrize("method", PRETEXT_TASKS)
def test_quick_demo_runs_with_every_pretext_method(method: str, tmp_path: Path) -> None:
    out = tmp_path / method
    assert cli.main(["--quiet", "demo", "--quick", "--out", str(out), f"pretext.method={method}"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["pretext"]["method"] == method
    assert set(results["arms"]) == {"baseline", "bissl"}
    for arm, record in results["arms"].items():
        summary = record["summary"]
        for metric in ("test_top1", "test_loss"):
            values = summary[metric]["values"]
            assert values and all(math.isfinite(v) for v in values), (arm, metric, values)
            assert math.isfinite(summary[metric]["mean"]), (arm, metric)
        numbers = _finite_numbers(summary)
        assert numbers and all(math.isfinite(n) for n in numbers), (arm, summary)
    for arm in ("baseline", "bissl"):
        probes = _finite_numbers(results["probes"][arm])
        assert probes and all(math.isfinite(n) for n in probes), (arm, results["probes"][arm])
