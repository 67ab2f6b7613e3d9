"""The report renders in a real browser: headless Chromium takes a screenshot that is not blank."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bissl.report import write_report

from .test_report import make_results, write_results, write_tsne_png

CHROMIUM = Path("/usr/bin/chromium")


def screenshot(page: Path, output: Path, profile: Path, width: int = 1280, height: int = 4000) -> None:
    """Render a local HTML file with headless Chromium, offline and without a sandbox, into a PNG."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        f"--screenshot={output}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=180)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package chromium)")
def test_report_screenshot_is_not_blank(tmp_path: Path) -> None:
    from matplotlib import image

    run_dir = tmp_path / "compare"
    run_dir.mkdir()
    write_tsne_png(run_dir / "tsne.png")
    page = write_report(write_results(run_dir, make_results()))
    output = tmp_path / "report.png"
    screenshot(page, output, tmp_path / "profile")
    assert output.is_file()
    pixels = image.imread(output)
    assert pixels.shape[:2] == (4000, 1280)
    rgb = (np.asarray(pixels)[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    distinct_colours = np.unique(rgb, axis=0).shape[0]
    assert distinct_colours > 50  # text, tables and figures, not a blank or single-colour page
    non_white = np.any(rgb < 240, axis=1).mean()
    assert non_white > 0.02
