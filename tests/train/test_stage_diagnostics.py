"""``bissl bilevel`` with curvature diagnostics on a tiny synthetic run: metrics.jsonl holds them with finite
values on the scheduled alternations, and the report draws its Curvature section from those records."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bissl import cli
from bissl.report import write_report
from tests.report.test_report import make_results, write_results
from tests.tiny import TINY

DIAGNOSTICS = ("lambda_min", "lambda_max", "ritz_below", "true_residual", "cosine_first_order")


def test_bilevel_logs_diagnostics_and_the_report_plots_them(tmp_path: Path) -> None:
    pretrain = tmp_path / "pretrain"
    assert (
        cli.main(
            [
                "--quiet",
                "pretrain",
                "--out",
                str(pretrain),
                *TINY,
                "pretrain.steps=2",
                "pretrain.batch_size=16",
            ]
        )
        == 0
    )
    run = tmp_path / "bilevel"
    argv = [
        "--quiet",
        "bilevel",
        "--out",
        str(run),
        *TINY,
        f"pretext_checkpoint={pretrain / 'checkpoints' / 'pretext.pt'}",
        "warmup.epochs=1",
        "bilevel.alternations=3",
        "bilevel.lower_steps=1",
        "bilevel.upper_steps=2",
        "bilevel.lower_batch_size=8",
        "bilevel.upper_batch_size=8",
        "bilevel.lower_warmup_steps=1",
        "bilevel.solver=lowrank",
        "bilevel.lowrank_rank=3",
        "bilevel.diagnose_every=2",
        "bilevel.diagnose_steps=4",
    ]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r.get("stage") == "bilevel"]
    assert [r["alternation"] for r in records] == [1, 2, 3]
    assert ["lambda_min" in r for r in records] == [True, False, True]
    for record in records:
        assert record["products"] == 3 + (5 if "lambda_min" in record else 0)
        assert record["damping"] == 10.0
    for record in (records[0], records[2]):
        assert all(math.isfinite(record[key]) for key in DIAGNOSTICS)
        assert isinstance(record["positive_definite"], bool)

    results = make_results()
    results["curves"]["bilevel"] = records
    document = write_report(write_results(tmp_path, results)).read_text(encoding="utf-8")
    assert '<section id="curvature">' in document
    assert "diagnosed alternations" in document
