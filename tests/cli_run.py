"""Shared test helpers for command-line cases: run ``bissl`` in-process and capture its exit code and
stderr, and fingerprint a folder's files to show that a refused command changed nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bissl import cli


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``bissl --quiet ARGV`` in this process: its exit code and its stripped stderr. A KeyboardInterrupt that
    escapes is what a shell sees as status -2."""
    capsys.readouterr()
    try:
        code = cli.main(["--quiet", *argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    except KeyboardInterrupt:
        code = -2
    return code, capsys.readouterr().err.strip()
