"""The package's shape: no import cycle inside any package of bissl, and the import-linter contracts in
pyproject.toml (layers that point down, independence of bilevel/pretext/eval) hold."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The import graph of the bissl sources in this tree (not of an installed copy)."""
    sys.path.insert(0, str(SOURCE))
    try:
        return grimp.build_graph("bissl", cache_dir=None)
    finally:
        sys.path.remove(str(SOURCE))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the directed graph ``edges`` as [a, b, ..., a], or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found is not None:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found is not None:
                return found
    return None


def test_find_cycle_finds_a_cycle_and_only_a_real_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_the_graph_covers_every_source_file(graph: grimp.ImportGraph) -> None:
    files = list((SOURCE / "bissl").rglob("*.py"))
    assert len(graph.modules) == len(files)
    assert {
        "bissl.optim",
        "bissl.data.registry",
        "bissl.report.page",
        "bissl.bilevel.trainer",
    } <= graph.modules


def test_no_import_cycle_among_the_modules_of_any_package(graph: grimp.ImportGraph) -> None:
    """Within each package, its direct children (a subpackage standing for everything inside it) import
    each other without a cycle; a package's own __init__ importing its children is not a cycle."""
    packages = {module for module in graph.modules if graph.find_children(module)}
    for package in sorted(packages):
        children = graph.find_children(package)
        edges: dict[str, set[str]] = {child: set() for child in children}
        for child in children:
            members = {child} | graph.find_descendants(child)
            for member in members:
                for imported in graph.find_modules_directly_imported_by(member):
                    for other in children - {child}:
                        if imported == other or imported.startswith(other + "."):
                            edges[child].add(other)
        cycle = find_cycle(edges)
        assert cycle is None, f"import cycle inside {package}: {' -> '.join(cycle or [])}"


def test_no_import_cycle_between_any_two_modules(graph: grimp.ImportGraph) -> None:
    edges = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    # A package's __init__ imports its children to re-export them; children never import their package back.
    for module, imported in edges.items():
        assert not any(module.startswith(package + ".") for package in imported), (
            f"{module} imports its own package {sorted(imported)}"
        )
    cycle = find_cycle(edges)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_bilevel_core_imports_no_training_loop_dataset_or_cli(graph: grimp.ImportGraph) -> None:
    for upper in ("bissl.train", "bissl.data", "bissl.cli", "bissl.experiment", "bissl.study", "bissl.parts"):
        chains = graph.find_shortest_chains(importer="bissl.bilevel", imported=upper, as_packages=True)
        assert not chains, (
            f"bissl.bilevel reaches {upper}: {[' -> '.join(chain) for chain in sorted(chains)]}"
        )


def test_import_linter_contracts_hold() -> None:
    assert LINT_IMPORTS.is_file(), f"lint-imports not found next to {sys.executable}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def _layers() -> list[list[str]]:
    """The layers contract of pyproject.toml, top first, each as its list of module names."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    return [[name.strip() for name in re.split(r"[:|]", layer)] for layer in layers]


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The index (0 = top) of the layer that holds ``module`` or a package above it; None when none does."""
    for index, names in enumerate(layers):
        if any(module == name or module.startswith(name + ".") for name in names):
            return index
    return None


def string_loaded_violations(table: dict[str, tuple[str, str]], layers: list[list[str]]) -> list[str]:
    """Entries of a command table (name -> (module, function)) whose module the CLI may not load: missing,
    without the function, outside the layers, or not below bissl.cli. The CLI imports these modules by name
    when a command runs, so the import graph (and import-linter) never sees those edges."""
    cli_layer = layer_of("bissl.cli", layers)
    assert cli_layer is not None
    problems = []
    for name, (module, function) in table.items():
        layer = layer_of(module, layers)
        if layer is None or layer <= cli_layer:
            problems.append(f"{name}: {module} is not in a layer below bissl.cli")
            continue
        try:
            loaded = importlib.import_module(module)
        except ImportError as error:
            problems.append(f"{name}: {module} cannot be imported ({error})")
            continue
        if not callable(getattr(loaded, function, None)):
            problems.append(f"{name}: {module} has no function {function}")
    return problems


def test_the_modules_the_cli_loads_by_name_sit_below_it() -> None:
    from bissl.cli import STAGES

    layers = _layers()
    table = {name: (stage.module, stage.function) for name, stage in STAGES.items()}
    assert string_loaded_violations(table, layers) == []
    # The check can fail: a table naming a module above or beside the CLI, or a missing function.
    bad = {"up": ("bissl.__main__", "main"), "gone": ("bissl.train.pretrain", "no_such_stage")}
    assert string_loaded_violations(bad, layers) == [
        "up: bissl.__main__ is not in a layer below bissl.cli",
        "gone: bissl.train.pretrain has no function no_such_stage",
    ]
