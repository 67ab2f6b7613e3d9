"""The built wheel in a fresh virtual environment: `bissl demo --quick` runs outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = (".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*_cache")


def _run(
    command: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_wheel_installs_in_a_fresh_environment_and_runs_the_quick_demo_anywhere(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), BISSL_QUIET="1")
    # Built from a copy of the sources: a build in the checkout would leave build/ behind, whose stale
    # files could end up in a later wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    (wheel,) = wheels.glob("bissl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(name).name for name in archive.namelist() if name.startswith("bissl/configs/")}
    assert {"demo.yaml", "demo-quick.yaml", "paper-v1-resnet18-stl10.yaml"} <= shipped

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env, timeout=300)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)]
    _run(install, cwd=tmp_path, env=env, timeout=1200)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bissl = str(venv / "bin" / "bissl")
    located = _run(
        [str(python), "-c", "import bissl; print(bissl.__file__)"], cwd=elsewhere, env=env, timeout=120
    )
    assert str(venv) in located.stdout and str(ROOT) not in located.stdout
    listing = _run([bissl, "configs"], cwd=elsewhere, env=env, timeout=120).stdout
    assert "demo-quick" in listing and "paper-v1-resnet18-stl10" in listing
    shown = _run(
        [bissl, "config", "show", "--config", "paper-v1-resnet18-stl10", "bilevel"],
        cwd=elsewhere,
        env=env,
        timeout=120,
    )
    assert "bilevel.gamma" in shown.stdout

    out = elsewhere / "runs" / "demo-quick"
    _run([bissl, "--quiet", "demo", "--quick", "--out", str(out)], cwd=elsewhere, env=env, timeout=3000)
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) >= {"baseline", "bissl"}
