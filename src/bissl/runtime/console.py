"""What a run shows on the terminal: status lines on stderr and progress bars, both silenced by --quiet
(``BISSL_QUIET=1``) and on ranks other than 0."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

from bissl import distributed


def quiet() -> bool:
    """Progress bars are off when not a terminal, with --quiet (BISSL_QUIET=1), and on ranks other than 0."""
    return os.environ.get("BISSL_QUIET") == "1" or not sys.stderr.isatty() or not distributed.is_main()


def progress(total: int, description: str, initial: int = 0) -> tqdm:
    """A progress bar with rate and ETA (silent when ``quiet()``)."""
    return tqdm(
        total=total, initial=initial, desc=description, disable=quiet(), dynamic_ncols=True, leave=False
    )


def say(message: str) -> None:
    """One line to stderr from rank 0 unless quiet."""
    if distributed.is_main() and os.environ.get("BISSL_QUIET") != "1":
        print(message, file=sys.stderr, flush=True)
