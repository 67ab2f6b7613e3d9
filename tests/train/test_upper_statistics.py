"""The upper backbone's BatchNorm statistics: recomputed at the current weights before θ_D is evaluated or
saved (``bilevel.upper_bn=refresh``), so its eval-mode validation loss tracks its training loss; the running
averages left by the upper steps (``running``) trail the weights and misreport it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bissl import cli
from tests.tiny import TINY

DIGITS = [*[o for o in TINY if not o.startswith("data.downstream=")], "data.downstream=digits"]


def _stage(tmp_path: Path, pretext: Path, mode: str) -> tuple[list[dict[str, float]], dict[str, object]]:
    run = tmp_path / f"bilevel-{mode}"
    argv = [
        "--quiet",
        "bilevel",
        "--out",
        str(run),
        *DIGITS,
        f"pretext_checkpoint={pretext}",
        "warmup.epochs=3",
        "warmup.lr=0.1",
        "bilevel.alternations=3",
        "bilevel.lower_steps=2",
        "bilevel.upper_steps=4",
        "bilevel.lower_batch_size=16",
        "bilevel.upper_batch_size=32",
        "bilevel.lower_warmup_steps=1",
        "bilevel.solver_iterations=2",
        "bilevel.eval_every=1",
        f"bilevel.upper_bn={mode}",
    ]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    return [r for r in records if r.get("stage") == "bilevel"], summary


@pytest.fixture(scope="module")
def pretext(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    argv = ["--quiet", "pretrain", "--out", str(out), *DIGITS, "pretrain.steps=20", "pretrain.batch_size=32"]
    assert cli.main(argv) == 0
    return out / "checkpoints" / "pretext.pt"


def _tracks(record: dict[str, float]) -> bool:
    """Eval-mode validation loss within a quarter of the train-mode loss of the same alternation."""
    return abs(record["val_loss"] - record["upper_loss_upper"]) <= 0.25 * record["upper_loss_upper"]


def test_refreshed_upper_model_val_loss_tracks_its_training_loss(tmp_path: Path, pretext: Path) -> None:
    records, summary = _stage(tmp_path, pretext, "refresh")
    assert [r["alternation"] for r in records] == [1, 2, 3]
    assert all(_tracks(r) for r in records), [(r["val_loss"], r["upper_loss_upper"]) for r in records]
    assert summary["val_upper"] == {k[4:]: v for k, v in records[-1].items() if k.startswith("val_")}


def test_running_averages_trail_the_weights(tmp_path: Path, pretext: Path) -> None:
    """The same stage without the refresh: the criterion above fails, so the test above can fail."""
    records, _ = _stage(tmp_path, pretext, "running")
    assert not all(_tracks(r) for r in records), [(r["val_loss"], r["upper_loss_upper"]) for r in records]
