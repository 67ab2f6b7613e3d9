"""Shipped configs by name, `bissl configs`, `bissl config show` and the stages' --help."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bissl import cli, config
from bissl.config import (
    SHIPPED_CONFIGS,
    Config,
    attribute_docstrings,
    field_descriptions,
    flatten,
    format_value,
    load_config,
    resolve_config,
    shipped_configs,
)
from bissl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _config_dataclasses() -> list[type]:
    return [
        cls
        for _, cls in inspect.getmembers(config, inspect.isclass)
        if dataclasses.is_dataclass(cls) and cls.__module__.startswith(config.__name__ + ".")
    ]


def test_every_config_field_has_a_one_line_description() -> None:
    docs = attribute_docstrings()
    classes = _config_dataclasses()
    assert Config in classes and len(classes) >= 13
    missing = [
        f"{cls.__name__}.{item.name}"
        for cls in classes
        for item in dataclasses.fields(cls)
        if not docs.get(cls.__name__, {}).get(item.name)
    ]
    assert not missing, f"fields without an attribute docstring: {missing}"
    assert all("\n" not in text for text in field_descriptions().values())


def test_descriptions_come_from_the_line_below_each_field() -> None:
    descriptions = field_descriptions()
    assert descriptions["bilevel.lam"].startswith("λ: weight of the proximal term")
    assert descriptions["data.channels"].startswith("Input channels of the backbone")
    assert descriptions["seed"].startswith("Seed of every random draw")
    assert set(descriptions) == set(flatten(Config()))


def test_config_show_prints_every_key_with_value_and_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show", "--config", "demo", "bilevel.lam=0.25", "data.channels=1"]) == 0
    out = capsys.readouterr().out
    resolved = flatten(load_config("demo", ["bilevel.lam=0.25", "data.channels=1"]))
    descriptions = field_descriptions()
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("#")}
    assert set(rows) == set(resolved)
    for key, value in resolved.items():
        fields = rows[key].split(None, 1)[1]
        assert fields.startswith(format_value(value) + " "), rows[key]
        assert rows[key].endswith(descriptions[key])
    assert rows["bilevel.lam"].split()[1] == "0.25"
    assert rows["data.channels"].split()[1] == "1"
    assert rows["model.blocks"].split(None, 1)[1].startswith("[1, 1, 1]")
    assert "# bilevel: " in out


def test_config_show_filters_sections_and_rejects_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show", "bilevel", "data.channels"]) == 0
    keys = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line and line[0] != "#"]
    assert "data.channels" in keys and "bilevel.lam" in keys
    assert all(k.startswith("bilevel.") or k == "data.channels" for k in keys)
    assert cli.main(["config", "show", "bilevl"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bilevl" in err and "bilevel" in err


def test_every_stage_help_names_its_sections_and_points_to_config_show(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sections = set(config.section_descriptions())
    for name in [*cli.STAGES, "demo"]:
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "bissl config show" in text, name
        assert "Reads " in text, name
        if name in cli.STAGES and cli.STAGES[name].sections:
            assert set(cli.STAGES[name].sections) <= sections, name
            assert ", ".join(cli.STAGES[name].sections) in text, name
        else:
            assert "every config section" in text, name


def test_shipped_configs_resolve_by_name_and_paths_still_work(tmp_path: Path) -> None:
    names = shipped_configs()
    assert {
        "demo",
        "demo-quick",
        "demo-vit",
        "demo-vit-quick",
        "paper-v1-resnet18-stl10",
        "smoke-ddp",
    } <= set(names)
    assert resolve_config("demo") == SHIPPED_CONFIGS / "demo.yaml"
    assert load_config("demo-quick") == load_config(str(SHIPPED_CONFIGS / "demo-quick.yaml"))
    own = tmp_path / "mine.yaml"
    own.write_text("bilevel:\n  lam: 0.5\n")
    assert load_config(str(own)).bilevel.lam == 0.5
    with pytest.raises(
        ConfigError, match=r"unknown config name 'dmeo'; shipped configs: .*demo-quick"
    ) as error:
        load_config("dmeo")
    assert "\n" not in str(error.value)


def test_a_bare_name_that_is_a_local_file_is_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("local").write_text("seed: 7\n")
    assert load_config("local").seed == 7
    assert load_config("demo").seed == 0


def test_configs_lists_every_shipped_config_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, path in shipped_configs().items():
        first = next(line for line in path.read_text().splitlines() if line.startswith("#"))
        row = next(line for line in lines if line.split()[0] == name)
        assert first.lstrip("# ").split(":")[0] in row
    assert any(line.split()[0] == "paper-v1-resnet18-stl10" and "ResNet-18" in line for line in lines)


def test_demo_uses_the_shipped_configs_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    asked: list[str | None] = []
    outs: list[str] = []

    def run_stage(stage: object, args: Any, path: str | None, literal: object) -> int:
        asked.append(path)
        outs.append(args.out)
        return 0

    monkeypatch.setattr(cli, "_run_stage", run_stage)
    assert cli.main(["demo", "--quick"]) == 0
    assert cli.main(["demo"]) == 0
    assert cli.main(["demo", "--vit"]) == 0
    assert cli.main(["demo", "--vit", "--quick", "--out", "elsewhere"]) == 0
    assert [resolve_config(str(p)) for p in asked] == [
        SHIPPED_CONFIGS / "demo-quick.yaml",
        SHIPPED_CONFIGS / "demo.yaml",
        SHIPPED_CONFIGS / "demo-vit.yaml",
        SHIPPED_CONFIGS / "demo-vit-quick.yaml",
    ]
    assert outs == ["runs/demo", "runs/demo", "runs/demo-vit", "elsewhere"]


def test_repository_configs_folder_is_a_relative_link_that_git_stores() -> None:
    link = ROOT / "configs"
    assert link.is_symlink() and os.readlink(link) == "src/bissl/configs"
    assert (link / "demo.yaml").read_text() == (SHIPPED_CONFIGS / "demo.yaml").read_text()
    listing = subprocess.run(
        ["git", "ls-files", "-s", "configs"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listing.returncode != 0 or not listing.stdout:
        pytest.skip("not a git checkout")
    assert listing.stdout.split()[0] == "120000"
