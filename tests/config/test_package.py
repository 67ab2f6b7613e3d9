"""`bissl.config` and `bissl.runtime` are packages: every name their importers use comes from the package,
and the field descriptions `bissl config show` prints are still read from the dataclasses' source."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import bissl
import bissl.config
import bissl.runtime
from bissl.config import (
    SHIPPED_CONFIGS,
    Config,
    attribute_docstrings,
    describe_config,
    field_descriptions,
    section_descriptions,
)
from bissl.config.describe import DOCUMENTED_MODULES

ROOT = Path(__file__).resolve().parents[2]
IMPORTERS = ("src", "tests", "benchmarks")
PACKAGES = ("bissl.config", "bissl.runtime")


def _imported_names(package: str) -> dict[str, list[str]]:
    """Name -> the files that import it with ``from <package> import name`` (at any depth of a module)."""
    found: dict[str, list[str]] = {}
    for folder in IMPORTERS:
        for file in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(file.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == package and node.level == 0:
                    for alias in node.names:
                        found.setdefault(alias.name, []).append(str(file.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_importers_use_comes_from_the_package(package: str) -> None:
    module = importlib.import_module(package)
    imported = _imported_names(package)
    assert imported, f"nothing imports from {package}"
    missing = {name: files for name, files in imported.items() if not hasattr(module, name)}
    assert not missing, f"{package} lacks names its importers use: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_are_exported_and_defined_in_the_package(package: str) -> None:
    module = importlib.import_module(package)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        value = getattr(module, name)
        defined_in = getattr(value, "__module__", None)
        if defined_in is not None and callable(value):
            assert defined_in.startswith(package + "."), f"{package}.{name} comes from {defined_in}"


def test_names_used_across_the_code_stay_exported() -> None:
    for name in ("Config", "BilevelConfig", "load_config", "to_dict", "dump_yaml", "apply_overrides"):
        assert name in bissl.config.__all__, name
    for name in ("RunDir", "GracefulStop", "StopRequested", "NonFiniteGuard", "say", "progress"):
        assert name in bissl.runtime.__all__, name


def test_attribute_docstrings_are_read_from_the_schema_source() -> None:
    docs = attribute_docstrings()
    assert docs["BilevelConfig"]["lam"].startswith("λ: weight of the proximal term")
    assert docs["Config"]["bilevel"] == "The BiSSL stage."
    assert docs["Range"]["low"] == "The smallest allowed value (null: no lower bound)."
    package_folder = Path(bissl.config.__file__).resolve().parent
    for module in DOCUMENTED_MODULES:
        source = Path(module.__file__ or "").resolve()
        assert source.suffix == ".py" and source.parent == package_folder, source


def test_every_config_key_and_section_has_a_description() -> None:
    descriptions = field_descriptions()
    assert "bilevel.lam" in descriptions and "data.channels" in descriptions
    assert not [key for key, text in descriptions.items() if not text]
    sections = section_descriptions()
    assert {"data", "bilevel", "study"} <= set(sections)
    assert all(sections.values())
    leaf_sections = {key.split(".", 1)[0] for key in descriptions if "." in key}
    assert leaf_sections == set(sections)


def test_config_show_lists_every_key_with_its_description() -> None:
    text = describe_config(Config())
    for key, description in field_descriptions().items():
        line = next((row for row in text.splitlines() if row.split(" ", 1)[0] == key), None)
        assert line is not None and line.endswith(description), key


def test_shipped_configs_live_inside_the_package() -> None:
    assert Path(bissl.__file__).resolve().parent / "configs" == SHIPPED_CONFIGS
    assert (SHIPPED_CONFIGS / "demo.yaml").is_file()
