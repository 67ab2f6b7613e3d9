"""Run folders under user mistakes and accidents: flag values taken literally, bad --out folders, refused
resumes that rewrite nothing, failed set-ups that block no rerun, moved and damaged compare folders, reports
that cannot be written, a full disk, Ctrl-C at start-up and the non-finite stop. Each case ends in one line
naming the problem, the expected exit code, no traceback, and (where the command is refused) no file changed."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bissl import cli
from bissl.pretext.simclr import SimCLR
from tests.cli_run import run_cli, snapshot
from tests.report.test_report import make_results, write_results
from tests.test_compare import SETTINGS as COMPARE

TINY = ["data.pretext=synthetic", "data.downstream=synthetic", "model.width=4", "model.blocks=[1]"]
PRETRAIN = [*TINY, "pretrain.steps=2", "pretrain.batch_size=16"]
RESNET = ["model.backbone=resnet18", "model.stem=imagenet", "device=cpu"]


def _folders(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny pretraining run (copied by the cases that need one)."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    assert cli.main(["--quiet", "pretrain", "--out", str(out), *PRETRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny comparison (copied by the cases that need one)."""
    out = tmp_path_factory.mktemp("compared") / "run"
    assert cli.main(["--quiet", "compare", "--out", str(out), *COMPARE]) == 0
    return out


@dataclass
class Context:
    """What a case builds its command from: its own temporary folder (the test's working folder), copies of
    finished runs, and monkeypatch for the cases that simulate an accident."""

    tmp: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch

    def copy_of(self, fixture: str) -> Path:
        source: Path = self.request.getfixturevalue(fixture)
        target = self.tmp / fixture
        shutil.copytree(source, target)
        return target

    def file(self, name: str, text: str = "x") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


def _tensors(c: Context, name: str) -> Path:
    torch.save({"weight": torch.zeros(1)}, c.tmp / name)
    return c.tmp / name


def _interrupt(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


def _ctrl_c_at_start(c: Context) -> list[str]:
    c.monkeypatch.setattr("bissl.config.load_config", _interrupt)
    return ["pretrain", "--out", str(c.tmp / "o"), *PRETRAIN]


def _ctrl_c_while_parsing(c: Context) -> list[str]:
    c.monkeypatch.setattr(cli, "build_parser", _interrupt)
    return ["pretrain", "--out", str(c.tmp / "o"), *PRETRAIN]


def _ctrl_c_while_loading(c: Context) -> list[str]:
    c.monkeypatch.setattr("bissl.train.pretrain.load_pretext_source", _interrupt)
    return ["pretrain", "--out", str(c.tmp / "o"), *PRETRAIN]


def _disk_full_at_second_checkpoint(c: Context) -> list[str]:
    original, calls = torch.save, {"n": 0}

    def save(obj: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            stream.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        original(obj, stream, *args, **kwargs)

    c.monkeypatch.setattr(torch, "save", save)
    return [
        "pretrain",
        "--out",
        str(c.tmp / "o"),
        *TINY,
        "pretrain.steps=4",
        "pretrain.batch_size=16",
        "pretrain.checkpoint_every=1",
    ]


def _poison_from(c: Context, call: int) -> None:
    original = SimCLR.loss
    count = {"n": 0}

    def poisoned(self: SimCLR, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        count["n"] += 1
        loss = original(self, view1, view2)
        return loss * float("nan") if count["n"] >= call else loss

    c.monkeypatch.setattr(SimCLR, "loss", poisoned)


def _nonfinite(c: Context, first_bad_call: int, limit: int) -> list[str]:
    _poison_from(c, first_bad_call)
    return [
        "pretrain",
        "--out",
        str(c.tmp / "o"),
        *TINY,
        "pretrain.steps=20",
        "pretrain.batch_size=16",
        "pretrain.checkpoint_every=1",
        f"max_nonfinite={limit}",
    ]


def _compare_folder(c: Context) -> Path:
    (c.tmp / "cmp").mkdir()
    return write_results(c.tmp / "cmp", make_results())


def _report_cannot_rename(c: Context) -> list[str]:
    run = _compare_folder(c)

    def read_only(self: Path, target: Any) -> Path:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    c.monkeypatch.setattr(Path, "replace", read_only)
    return ["report", str(run)]


def _report_html_is_a_folder(c: Context) -> list[str]:
    run = _compare_folder(c)
    (run / "report.html").mkdir()
    (run / "report.html" / "keep.txt").write_text("x")
    return ["report", str(run)]


def _curvature_into_a_file(c: Context) -> list[str]:
    def never(config: Any) -> Any:
        raise AssertionError("the curvature was computed before --out was checked")

    c.monkeypatch.setattr("bissl.train.curvature.measure_curvature", never)
    pretext = c.request.getfixturevalue("pretrained") / "checkpoints" / "pretext.pt"
    return ["curvature", "--out", str(c.file("taken")), *TINY, f"pretext_checkpoint={pretext}"]


def _data_error_in_existing_folder(c: Context) -> list[str]:
    (c.tmp / "o").mkdir()
    return ["pretrain", "--out", str(c.tmp / "o"), *PRETRAIN, "data.pretext=imagenot"]


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Context], list[str]]
    expected: str
    code: int = 2
    unchanged: bool = True
    """Every file and folder of the case's temporary folder is as it was before the command."""


CASES: list[Case] = [
    # 1. flag values are literal, never YAML
    Case(
        "checkpoint flag with ' #'",
        lambda c: ["import", "--layout", "torchvision", "--checkpoint", "r18 #v2.pth", "--out", "o", *RESNET],
        "checkpoint 'r18 #v2.pth' does not exist",
    ),
    Case(
        "checkpoint flag that YAML reads as a number",
        lambda c: ["import", "--layout", "torchvision", "--checkpoint", "2024", "--out", "o", *RESNET],
        "checkpoint '2024' does not exist",
    ),
    Case(
        "checkpoint flag that YAML reads as null",
        lambda c: ["import", "--layout", "torchvision", "--checkpoint", "null", "--out", "o", *RESNET],
        "checkpoint 'null' does not exist",
    ),
    Case(
        "head flag that YAML reads as a number",
        lambda c: [
            "import",
            "--layout",
            "bissl-reference",
            "--checkpoint",
            str(_tensors(c, "x.pth")),
            "--head",
            "2024",
            "--out",
            "o",
            *RESNET,
        ],
        "checkpoint '2024' does not exist",
    ),
    Case(
        "config flag with ' #'",
        lambda c: ["pretrain", "--config", "my #1.yaml", "--out", "o"],
        "config file 'my #1.yaml' does not exist",
    ),
    # 2. bad --out names
    Case("empty --out", lambda c: ["pretrain", "--out", "", *PRETRAIN], "--out is empty"),
    Case(
        "--out name too long",
        lambda c: ["pretrain", "--out", str(c.tmp / ("x" * 300)), *PRETRAIN],
        "longer than the",
    ),
    Case("--out is a file", lambda c: ["pretrain", "--out", str(c.file("f")), *PRETRAIN], "is a file"),
    # 3. --resume of nothing, a folder of something else
    Case(
        "--resume of a missing folder",
        lambda c: ["pretrain", "--resume", "--out", str(c.tmp / "nope"), *PRETRAIN],
        "does not exist, so there is no run to resume",
    ),
    Case(
        "--resume of a folder without a run",
        lambda c: ["pretrain", "--resume", "--out", str(c.file("keep.txt").parent), *PRETRAIN],
        "holds no bissl run",
    ),
    Case(
        "--out on a folder of other files",
        lambda c: ["pretrain", "--out", str(c.file("notes.txt").parent), *PRETRAIN],
        "not empty and holds no bissl run (no config.yaml)",
    ),
    # 4. refused resumes rewrite nothing; a failed set-up leaves nothing behind
    Case(
        "--resume with another model.width",
        lambda c: ["pretrain", "--resume", "--out", str(c.copy_of("pretrained")), *PRETRAIN, "model.width=8"],
        "model.width=4 (its config.yaml) but this command sets model.width=8",
    ),
    Case("data error in an existing folder", _data_error_in_existing_folder, "imagenot"),
    # 6. a compare resumed under a changed key names the part that reads it
    Case(
        "compare --resume with another bilevel.lam",
        lambda c: ["compare", "--resume", "--out", str(c.copy_of("compared")), *COMPARE, "bilevel.lam=0.01"],
        "part 'bilevel'",
    ),
    # 8. report that cannot be written
    Case("report where report.html is a folder", _report_html_is_a_folder, "report.html is a folder"),
    Case("report in a read-only folder", _report_cannot_rename, "cannot write"),
    # 9. curvature --out checked first
    Case("curvature --out on a file", _curvature_into_a_file, "is a file"),
    # 10. full disk
    Case("disk full at a checkpoint", _disk_full_at_second_checkpoint, "free space", unchanged=False),
    # 11. Ctrl-C before the loop's handler
    Case("Ctrl-C while parsing the command line", _ctrl_c_while_parsing, "interrupted", code=130),
    Case("Ctrl-C while loading the config", _ctrl_c_at_start, "interrupted", code=130),
    Case("Ctrl-C while loading data", _ctrl_c_while_loading, "interrupted", code=130),
    # 12. the non-finite stop says what is kept
    Case(
        "non-finite stop before any checkpoint",
        lambda c: _nonfinite(c, first_bad_call=1, limit=1),
        "no checkpoint was written",
        unchanged=False,
    ),
    Case(
        "non-finite stop after checkpoints",
        lambda c: _nonfinite(c, first_bad_call=4, limit=2),
        f"{Path('o') / 'checkpoints' / 'last.pt'}, is kept",
        unchanged=False,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_is_one_line_with_its_exit_code(
    case: Case,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = case.argv(Context(tmp_path, request, monkeypatch))
    files, folders = snapshot(tmp_path), _folders(tmp_path)
    code, err = run_cli(argv, capsys)
    assert code == case.code, err
    assert len(err.splitlines()) == 1, err
    assert case.expected in err, err
    assert "Traceback" not in err
    if case.unchanged:
        assert snapshot(tmp_path) == files
        assert _folders(tmp_path) == folders
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary file was left behind"


def test_literal_checkpoint_flag_imports_the_named_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchvision

    monkeypatch.chdir(tmp_path)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18 #v2.pth")
    argv = ["import", "--layout", "torchvision", "--checkpoint", "r18 #v2.pth", "--out", "run", *RESNET]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (
        yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["imported"]["checkpoint"]
        == "r18 #v2.pth"
    )


def test_failed_setup_does_not_block_the_corrected_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    out.mkdir()
    code, _ = run_cli(["pretrain", "--out", str(out), *PRETRAIN, "data.pretext=imagenot"], capsys)
    assert code == 2 and not any(out.iterdir())
    code, err = run_cli(["pretrain", "--out", str(out), *PRETRAIN], capsys)
    assert code == 0, err


def test_a_run_killed_during_setup_binds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What a run killed before its first step leaves (config.yaml, a split drawn for its data) is taken over
    by the next command, its stale split dropped."""
    out = tmp_path / "o"
    (out / "splits").mkdir(parents=True)
    (out / "checkpoints").mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"data": {"downstream": "digits", "val_fraction": 0.5}}))
    (out / "splits" / "synthetic.json").write_text("{}")
    argv = ["finetune", "--out", str(out), *TINY, "finetune.epochs=1", "finetune.batch_size=64"]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "splits" / "synthetic.json").read_text())["format"] == "bissl-split"


def test_full_disk_keeps_the_previous_checkpoint(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _disk_full_at_second_checkpoint(Context(tmp_path, request, monkeypatch))
    code, err = run_cli(argv, capsys)
    assert code == 2 and "no space left" in err and "last.pt" in err, err
    monkeypatch.undo()
    checkpoints = tmp_path / "o" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["last.pt"]
    assert torch.load(checkpoints / "last.pt", weights_only=True)["step"] == 1


def _part_summaries(root: Path) -> dict[Path, int]:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("summary.json") if p.parent != root}


def test_moved_compare_folder_keeps_its_finished_parts(
    compared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first"
    shutil.copytree(compared, first)
    bilevel = json.loads((first / "bissl" / "bilevel" / "summary.json").read_text())
    assert bilevel["config"]["head_checkpoint"] == str(Path("..", "warmup", "checkpoints", "head.pt"))
    assert not Path(bilevel["config"]["pretext_checkpoint"]).is_absolute()
    results = json.loads((first / "results.json").read_text())
    assert results["arms"]["bissl"]["backbone"] == "bissl/bilevel/lower_backbone.pt"
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    first.rename(moved)
    done = _part_summaries(moved)
    code, err = run_cli(["compare", "--out", str(moved), *COMPARE], capsys)
    assert code == 0, err
    assert _part_summaries(moved) == done, "a finished part was run again"


def test_absolute_paths_of_older_summaries_still_match_after_a_move(
    compared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(compared, moved)
    old_root = tmp_path / "gone"  # where an older version ran it, storing absolute paths
    for part in ("bissl/warmup", "bissl/bilevel", "baseline/finetune", "bissl/finetune"):
        file = moved / part / "summary.json"
        summary = json.loads(file.read_text())
        summary.pop("relative_paths")
        for key in ("pretext_checkpoint", "backbone", "head_checkpoint"):
            value = summary["config"][key]
            if value is not None:
                summary["config"][key] = str((old_root / part / value).resolve())
        file.write_text(json.dumps(summary))
    done = _part_summaries(moved)
    code, err = run_cli(["compare", "--out", str(moved), *COMPARE], capsys)
    assert code == 0, err
    assert _part_summaries(moved) == done, "a finished part was run again"


def test_truncated_summary_reruns_only_its_part(
    compared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    shutil.copytree(compared, out)
    broken = out / "bissl" / "warmup" / "summary.json"
    broken.write_text(broken.read_text()[:50])
    others = {path: mtime for path, mtime in _part_summaries(out).items() if out / path != broken}
    code, err = run_cli(["compare", "--out", str(out), *COMPARE], capsys)
    assert code == 0, err
    assert json.loads(broken.read_text())["stage"] == "warmup"
    assert {path: mtime for path, mtime in _part_summaries(out).items() if out / path != broken} == others


def test_report_help_names_what_it_writes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    text = capsys.readouterr().out
    assert (
        "report.html" in text and "results.json" in text and "write report.html and results.json" not in text
    )


def test_main_module_turns_ctrl_c_during_import_into_130(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = (
        "import builtins, runpy, sys\n"
        "real = builtins.__import__\n"
        "def fake(name, *a, **k):\n"
        "    if name == 'bissl.cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = fake\n"
        "runpy.run_module('bissl', run_name='__main__')\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 130, process.stderr
    assert process.stderr.strip() == "bissl: interrupted"


def test_a_closed_stdout_ends_the_listing_quietly() -> None:
    """``bissl data list | head -1``: when the reader of stdout has gone, no BrokenPipeError traceback."""
    import subprocess
    import sys

    child = (
        "import os, sys\n"
        "read, write = os.pipe()\n"
        "os.close(read)\n"  # a reader that has already gone: every write fails with EPIPE
        "os.dup2(write, 1)\n"
        "from bissl.cli import main\n"
        "sys.exit(main(['data', 'list']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
