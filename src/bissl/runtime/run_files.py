"""The files of a run folder: which are set-up (its config.yaml, data splits) and which are work (checkpoints,
metrics, summaries), so that a folder holding only set-up binds nothing."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.yaml"
SPLITS_FOLDER = "splits"
SETUP_NAMES = (CONFIG_FILE, CONFIG_FILE + ".tmp", ".write-test")


def is_setup_file(relative: Path) -> bool:
    """Whether a file of a run folder (path relative to it) is set-up only: a ``config.yaml`` (or what writing
    it leaves when killed) or a data split under ``splits/``, at any depth. Everything else (checkpoints,
    metrics, summaries, results) is work."""
    return relative.name in SETUP_NAMES or SPLITS_FOLDER in relative.parts[:-1]


def files_under(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``folder`` (relative path -> modification time in ns and size); empty when absent."""
    state: dict[Path, tuple[int, int]] = {}
    if not folder.is_dir():
        return state
    for path in folder.rglob("*"):
        try:
            info = path.stat()
        except OSError:
            continue
        if path.is_file():
            state[path.relative_to(folder)] = (info.st_mtime_ns, info.st_size)
    return state


def work_files(state: dict[Path, tuple[int, int]]) -> dict[Path, tuple[int, int]]:
    """The entries of a ``files_under`` state that are work, not set-up (see ``is_setup_file``)."""
    return {path: stamp for path, stamp in state.items() if not is_setup_file(path)}


def holds_work(folder: Path) -> bool:
    """Whether a run folder holds anything a run produced (a checkpoint, metrics, a summary): a folder with
    only its config.yaml and data splits is a run that never started, and its config binds nothing."""
    return bool(work_files(files_under(folder)))
