"""`bissl study` on tiny synthetic data: arms × pipeline seeds, statistics, report and evidence page; parts
resume after SIGKILL, an added arm runs only its own parts, and bad study sections end in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bissl import cli
from bissl.config import StudyArm, load_config
from bissl.parts import same_config
from bissl.study import arm_config, extra_pretext_config
from tests.tiny import TINY_PIPELINE

SETTINGS = [
    *TINY_PIPELINE,
    "bilevel.lower_warmup_steps=1",
    "search.seeds=2",
    "eval.probe_epochs=10",
]
ARMS: list[dict[str, Any]] = [
    {"name": "baseline"},
    {"name": "first-order", "bilevel": True, "overrides": ["bilevel.solver=identity"]},
]


def _write_config(path: Path, arms: list[dict[str, Any]], **study: Any) -> Path:
    path.write_text(
        yaml.safe_dump({"study": {"arms": arms, "pipeline_seeds": [1, 2], "reference": "baseline", **study}})
    )
    return path


def _study(config: Path, out: Path, *extra: str) -> int:
    return cli.main(["--quiet", "study", "--config", str(config), "--out", str(out), *extra, *SETTINGS])


@pytest.fixture(scope="module")
def studied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("study")
    config = _write_config(folder / "study.yaml", ARMS)
    out = folder / "run"
    assert _study(config, out) == 0
    return config, out


def test_study_runs_every_arm_and_seed_with_statistics(studied: tuple[Path, Path]) -> None:
    _, out = studied
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["finished_runs"] == 4
    for name in ("baseline", "first-order"):
        arm = results["arms"][name]
        assert set(arm["seeds"]) == {"1", "2"}
        for seed, block in arm["seeds"].items():
            assert block["finetune_seeds"] == [int(seed), int(seed) + 1]
            assert block["test_top1"] == pytest.approx(sum(block["finetune_values"]) / 2)
            assert block["knn_top1"] is not None and block["probe_top1"] is not None
            assert block["total_seconds"] > 0 and "finetune" in block["seconds"]
        assert arm["summary"]["test_top1"]["n"] == 2
    assert set(results["arms"]["first-order"]["seeds"]["1"]["seconds"]) == {
        "warmup",
        "bilevel",
        "finetune",
        "alignment",
    }
    entry = results["comparison"]["test_top1"]["first-order"]
    assert entry["seeds"] == [1, 2] and "t_pvalue_holm" in entry and "wilcoxon_pvalue_holm" in entry
    base = [results["arms"]["baseline"]["seeds"][s]["test_top1"] for s in ("1", "2")]
    other = [results["arms"]["first-order"]["seeds"][s]["test_top1"] for s in ("1", "2")]
    assert entry["mean_difference"] == pytest.approx((other[0] - base[0] + other[1] - base[1]) / 2)
    control = results["controls"]["bn-recalibrated"]
    assert set(control["seeds"]) == {"1", "2"} and "bn-recalibrated" in results["comparison"]["knn_top1"]
    assert "bn-recalibrated" not in results["comparison"]["test_top1"]
    assert results["timings"]["pretrain"] > 0
    html = (out / "report.html").read_text()
    assert 'id="forest"' in html and "data:image/png;base64," in html and "first-order" in html


def test_study_doc_writes_markdown_and_figure_and_keeps_marked_text(
    studied: tuple[Path, Path], tmp_path: Path
) -> None:
    from bissl.report.evidence import KEEP_MARKER

    _, out = studied
    page = tmp_path / "docs" / "evidence.md"
    page.parent.mkdir()
    page.write_text(f"old text\n{KEEP_MARKER}\n## How the testbed was chosen\nkept\n")
    assert cli.main(["study-doc", str(out), "--out", str(page)]) == 0
    text = page.read_text()
    assert "## Conclusion" in text and "first-order − baseline" in text and "| first-order |" in text
    assert "BatchNorm control" in text and "Matched compute" not in text and "Largest BiSSL gain" in text
    assert "old text" not in text and text.rstrip().endswith("kept")
    assert (page.parent / "images" / "evidence-forest.png").stat().st_size > 1000


def test_added_arm_runs_only_its_parts_and_changed_arm_is_refused(
    studied: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = studied
    before = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json") if p.parent != out}
    wider = _write_config(tmp_path / "wider.yaml", [*ARMS, {"name": "random", "init": "random"}])
    assert _study(wider, out, "--resume") == 0
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]["random"]["seeds"]) == {"1", "2"}
    assert "random" in results["comparison"]["test_top1"]
    changed = [ARMS[0], {**ARMS[1], "overrides": ["bilevel.solver=cg"]}]
    capsys.readouterr()
    assert _study(_write_config(tmp_path / "changed.yaml", changed), out, "--resume") == 2
    error = capsys.readouterr().err.strip()
    assert "was run with another config" in error and len(error.splitlines()) == 1


@pytest.mark.parametrize(
    ("arms", "study", "message"),
    [
        ([], {}, "'study.arms' is empty"),
        ([{"name": "baseline"}, {"name": "baseline"}], {}, "repeated: baseline"),
        ([{"name": "other"}], {}, "'study.reference' is 'baseline'"),
        ([{"name": "baseline"}, {"name": "r", "init": "random", "bilevel": True}], {}, "init=random"),
        ([{"name": "baseline"}, {"name": "b", "bilevel": True, "extra_pretext": True}], {}, "not both"),
        ([{"name": "bad/name"}], {"reference": "bad/name"}, "not a folder name"),
        ([{"name": "baseline", "overrides": ["bilevel.nope=1"]}], {}, "unknown config key 'bilevel.nope'"),
        ([{"name": "baseline", "overrides": ["bilevel.lam=-1"]}], {}, "'bilevel.lam' must be > 0"),
        ([{"name": "baseline"}], {"pipeline_seeds": [1, 1]}, "without repeats"),
    ],
)
def test_bad_study_sections_end_in_one_line(
    arms: list[dict[str, Any]],
    study: dict[str, Any],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _write_config(tmp_path / "bad.yaml", arms, **study)
    assert _study(config, tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out" / "pretrain").exists()


def test_extra_pretext_matches_the_lower_level_work() -> None:
    config = load_config(None, [*SETTINGS, "bilevel.alternations=3", "bilevel.lower_steps=5"])
    resolved = arm_config(config, StudyArm(name="x", extra_pretext=True), seed=7, pretext="p.pt")
    longer = extra_pretext_config(resolved, "p.pt")
    assert longer.seed == 7 and longer.pretrain.init_checkpoint == "p.pt"
    assert longer.pretrain.steps == 15
    assert longer.pretrain.lr == config.bilevel.lower_lr
    assert longer.pretrain.batch_size == config.bilevel.lower_batch_size
    assert longer.pretrain.clip_grad == config.bilevel.clip_grad
    assert longer.pretrain.optimizer == config.bilevel.lower_optimizer == "lars"
    adamw = arm_config(
        load_config(None, [*SETTINGS, "bilevel.lower_optimizer=adamw"]),
        StudyArm(name="x"),
        seed=7,
        pretext="p.pt",
    )
    assert extra_pretext_config(adamw, "p.pt").pretrain.optimizer == "adamw"


def test_killed_study_resumes_without_redoing_parts(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "study.yaml", ARMS)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BISSL_QUIET": "1"}
    argv = [sys.executable, "-m", "bissl", "study", "--config", str(config), "--out", str(out), *SETTINGS]
    process = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    marker = out / "arms" / "first-order" / "seed-1" / "bilevel" / "summary.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists()
    done_before = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    timings_before = json.loads((out / "timings.json").read_text())
    assert _study(config, out) == 0
    for path, mtime in done_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    timings = json.loads((out / "timings.json").read_text())
    for name, seconds in timings_before.items():
        assert timings[name] == seconds, f"{name} was timed again"
    assert json.loads((out / "results.json").read_text())["complete"]


def test_stopped_part_keeps_its_time_and_the_rerun_adds_to_it(tmp_path: Path) -> None:
    from bissl.parts import Parts
    from bissl.runtime import GracefulStop, RunDir, StopRequested

    config = load_config(None, SETTINGS)
    parts = Parts(tmp_path, GracefulStop(), "study")

    def stopped(config: Any, run: RunDir, *, stop: GracefulStop, resume: bool) -> None:
        time.sleep(0.05)
        raise StopRequested(15)

    def finishing(config: Any, run: RunDir, *, stop: GracefulStop, resume: bool) -> None:
        time.sleep(0.02)
        run.write_summary({"stage": "test"})

    with pytest.raises(StopRequested):
        parts.run("part", tmp_path / "part", config, stopped)
    first = json.loads((tmp_path / "timings.json").read_text())["part"]
    assert first >= 0.05
    again = Parts(tmp_path, GracefulStop(), "study")
    again.run("part", tmp_path / "part", config, finishing)
    assert again.timings["part"] >= first + 0.02
    assert again.run("part", tmp_path / "part", config, stopped)["stage"] == "test"


def test_parts_stay_valid_when_the_config_gains_keys_at_their_defaults() -> None:
    stored = {"seed": 1, "bilevel": {"lam": 0.1}}
    defaults = {
        "seed": 0,
        "bilevel": {"lam": 1e-3, "curvature": "hessian"},
        "logging": {"tensorboard": False},
    }
    grown = {"seed": 1, "bilevel": {"lam": 0.1, "curvature": "hessian"}, "logging": {"tensorboard": False}}
    assert same_config(stored, grown, defaults)
    assert not same_config(stored, {**grown, "bilevel": {"lam": 0.1, "curvature": "ggn"}}, defaults)
    assert not same_config(stored, {**grown, "logging": {"tensorboard": True}}, defaults)
    assert not same_config(stored, {**grown, "seed": 2}, defaults)
    assert not same_config({**stored, "removed": 1}, grown, defaults)


def _finish_part(config: Any, run: Any, *, stop: Any, resume: bool) -> None:
    run.write_summary({"stage": "test"})


def test_a_relative_checkpoint_outside_the_study_folder_is_stored_absolute_and_matches_on_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path given relative to the working directory that lies outside the study folder is stored as an
    absolute path (not relative to the part's folder), and the rerun from the same place finds the part done."""
    from bissl.parts import Parts
    from bissl.runtime import GracefulStop

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "pretext.pt").write_bytes(b"")
    config = load_config(None, [*SETTINGS, "pretext_checkpoint=pretrained/pretext.pt"])
    Parts(Path("study"), GracefulStop(), "study").run("part", Path("study/arm/part"), config, _finish_part)
    stored = json.loads((tmp_path / "study/arm/part/summary.json").read_text())["config"]
    assert stored["pretext_checkpoint"] == str(tmp_path.resolve() / "pretrained" / "pretext.pt")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished part was run again")

    again = Parts(Path("study"), GracefulStop(), "study")
    assert again.run("part", Path("study/arm/part"), config, refuse)["stage"] == "test"


def test_an_older_summary_that_kept_a_working_directory_path_still_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Summaries written before the fix kept such a path as given (relative to the working directory) beside
    paths relative to the part's folder; a relative value that names no file from the part's folder but from the working directory is read from there, so those parts are not refused or rerun."""
    from bissl.parts import Parts
    from bissl.runtime import GracefulStop

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "pretext.pt").write_bytes(b"")
    config = load_config(None, [*SETTINGS, "pretext_checkpoint=pretrained/pretext.pt"])
    Parts(Path("study"), GracefulStop(), "study").run("part", Path("study/arm/part"), config, _finish_part)
    file = tmp_path / "study/arm/part/summary.json"
    summary = json.loads(file.read_text())
    summary["config"]["pretext_checkpoint"] = "pretrained/pretext.pt"  # as the older version stored it
    file.write_text(json.dumps(summary))
    again = Parts(Path("study"), GracefulStop(), "study")
    assert again.done("part", Path("study/arm/part"), config) is not None
    other = load_config(None, [*SETTINGS, "pretext_checkpoint=elsewhere/pretext.pt"])
    with pytest.raises(Exception, match="pretext_checkpoint"):
        again.done("part", Path("study/arm/part"), other)
