"""How the ranks of a torchrun search work together: rank 0 alone talks to the study and announces each
step to the other ranks, which follow it. The messages, broadcast from rank 0:

- ``("trial", (lr, weight_decay, root))``: every rank fine-tunes this setting in ``trials/trial-{root}``;
- ``("wait", None)``: the study has enough trials running elsewhere; rank 0 polls again;
- ``("done", result)``: the search result, which every rank returns;
- ``("stop", signum)`` and ``("error", message)``: rank 0 stopped or failed outside a trial; every rank
  stops or raises too (inside a trial the ranks agree on a stop, and a crash ends torchrun).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bissl import distributed
from bissl.config import Config
from bissl.errors import BisslError, NonFiniteError
from bissl.runtime import GracefulStop
from bissl.train.search.fit import _fit_trial


def _tell_followers(kind: str, payload: Any = None) -> None:
    """Rank 0 of a torchrun search tells the other ranks what to do next (no-op in one process)."""
    if distributed.is_distributed():
        distributed.broadcast_object((kind, payload))


def _follow_trials(config: Config, folder: Path, stop: GracefulStop, resume: bool) -> dict[str, Any]:
    """The ranks other than 0 of a torchrun search: fine-tune every trial rank 0 announces, together with it,
    until it sends the search result (or a stop or an error, raised here too)."""
    while True:
        message: Any = distributed.broadcast_object(None)
        kind, payload = message
        if kind == "trial":
            lr, weight_decay, root = payload
            try:
                _fit_trial(config, folder, lr, weight_decay, root, stop, resume)
            except NonFiniteError:
                continue
        elif kind == "done":
            return dict(payload)
        elif kind == "stop":
            stop.signum = int(payload)
            stop.check()
        elif kind == "error":
            raise BisslError(str(payload))
