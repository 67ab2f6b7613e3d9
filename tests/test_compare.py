"""`bissl compare` end to end on tiny synthetic data: both arms, statistics, report; resumable by parts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bissl import cli
from tests.report.test_report import SECTION_IDS
from tests.tiny import TINY_PIPELINE

SETTINGS = [
    *TINY_PIPELINE,
    "bilevel.eval_every=1",
    "search.seeds=3",
    "eval.probe_epochs=20",
    "eval.tsne_samples=60",
]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare")
    assert cli.main(["--quiet", "compare", "--out", str(out), *SETTINGS]) == 0
    return out


def test_results_hold_both_arms_and_statistics(compared: Path) -> None:
    results = json.loads((compared / "results.json").read_text())
    assert set(results["arms"]) == {"baseline", "bissl"}
    for arm in results["arms"].values():
        assert len(arm["seeds"]) == 3
        assert arm["summary"]["test_top1"]["n"] == 3
        assert len(arm["search"]["trials"]) == 2
        assert "lr" in arm["search"]["trials"][0]
    comparison = results["comparison"]["test_top1"]
    assert comparison["n"] == 3 and len(comparison["ci95"]) == 2
    assert set(results["probes"]) == {"baseline", "bissl"}
    assert results["curves"]["bilevel"] and results["curves"]["pretrain"]
    assert Path(results["arms"]["bissl"]["backbone"]).name == "lower_backbone.pt"
    assert (compared / results["figures"]["tsne"]).is_file()


def test_report_has_every_section(compared: Path) -> None:
    html = (compared / "report.html").read_text()
    for section in SECTION_IDS:
        assert f'id="{section}"' in html, section


def test_killed_compare_resumes_without_redoing_parts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BISSL_QUIET": "1"}
    argv = [sys.executable, "-m", "bissl", "compare", "--out", str(out), *SETTINGS]
    process = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    marker = out / "baseline" / "finetune" / "summary.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists()
    done_before = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert cli.main(["--quiet", "compare", "--out", str(out), *SETTINGS]) == 0
    for path, mtime in done_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    assert (out / "results.json").is_file() and (out / "report.html").is_file()
