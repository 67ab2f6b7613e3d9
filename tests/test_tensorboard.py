"""logging.tensorboard: every number of metrics.jsonl as a TensorBoard scalar, read back from the event files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bissl import cli
from bissl.config import load_config
from bissl.runtime import RunDir, close_tensorboard_logs, scalar_metrics
from tests.tiny import TINY

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, from every event file in ``folder``."""
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def jsonl(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_scalars_equal_metrics_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "pretrain"
    steps = ["pretrain.steps=4", "pretrain.log_every=1", "pretrain.batch_size=16", "logging.tensorboard=true"]
    assert cli.main(["--quiet", "pretrain", "--out", str(out), *TINY, *steps]) == 0
    assert list(out.glob("events.out.tfevents.*"))
    scalars = read_scalars(out)
    records = jsonl(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert set(scalars) == {"pretrain/loss", "pretrain/lr"}
    for record in records:
        for name in ("loss", "lr"):
            assert scalars[f"pretrain/{name}"][record["step"]] == pytest.approx(
                record[name], rel=1e-6, abs=1e-12
            )


def test_every_number_of_every_record_is_written_under_its_stage(tmp_path: Path) -> None:
    config = load_config(None, ["logging.tensorboard=true"])
    run = RunDir(tmp_path, config)
    run.log({"stage": "bilevel", "alternation": 3, "lower_loss": 1.5, "upper_loss_lower": 0.25})
    run.log({"stage": "search", "trial": 2, "state": "COMPLETE", "params": {"lr": 0.1}, "value": 71.0})
    run.log({"stage": "evaluate", "knn_top1": 50.0, "diverged": True, "missing": None, "curve": [1, 2]})
    run.log({"stage": "evaluate", "knn_top1": 60.0})
    run.log({"stage": "finetune", "epoch": 5, "step": 40, "val_top1": 88.0})
    close_tensorboard_logs()
    scalars = read_scalars(tmp_path)
    assert scalars == {
        "bilevel/lower_loss": {3: 1.5},
        "bilevel/upper_loss_lower": {3: 0.25},
        "search/params/lr": {2: pytest.approx(0.1)},
        "search/value": {2: 71.0},
        "evaluate/knn_top1": {0: 50.0, 1: 60.0},
        "finetune/epoch": {40: 5.0},
        "finetune/val_top1": {40: 88.0},
    }
    numbers = [scalar_metrics(r) for r in jsonl(tmp_path)]
    assert numbers[1] == {"trial": 2.0, "params/lr": 0.1, "value": 71.0}


def test_off_by_default_writes_no_event_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path, load_config(None, []))
    run.log({"stage": "pretrain", "step": 1, "loss": 1.0})
    assert not list(tmp_path.glob("events.*"))


def test_missing_tensorboard_is_one_line_that_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "o"
    code = cli.main(["--quiet", "pretrain", "--out", str(out), *TINY, "logging.tensorboard=true"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "pip install 'bissl[tensorboard]'" in err and "logging.tensorboard=false" in err
    assert not out.exists()
