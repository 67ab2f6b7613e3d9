"""What every run shares: its output folder, logging, seeding, device choice, progress and clean stops.

The parts: ``run_dir`` (:class:`RunDir`, the run folder and its file writes), ``run_files`` (set-up and work
files of a run folder), ``config_paths`` (path values of a stored config made relative), ``records``
(metrics records as JSON values and scalars), ``tensorboard_logs`` (event files), ``console`` (status lines
and progress bars), ``devices`` (device choice and seeding), ``stopping`` (SIGTERM/SIGINT as a clean stop),
``nonfinite`` (the non-finite step guard) and ``timing`` (wall time per phase).
"""

from bissl.runtime.config_paths import PATH_KEYS, RELATIVE_PATHS, relative_paths
from bissl.runtime.console import progress, quiet, say
from bissl.runtime.devices import resolve_device, seed_everything
from bissl.runtime.nonfinite import NonFiniteGuard
from bissl.runtime.records import scalar_metrics
from bissl.runtime.run_dir import SPACE_ERRORS, WEIGHT_SHAPING_KEYS, RunDir, write_error
from bissl.runtime.run_files import (
    CONFIG_FILE,
    SETUP_NAMES,
    SPLITS_FOLDER,
    files_under,
    holds_work,
    is_setup_file,
    work_files,
)
from bissl.runtime.stopping import GracefulStop, StopRequested
from bissl.runtime.tensorboard_logs import (
    MAX_OPEN_WRITERS,
    STEP_KEYS,
    TENSORBOARD_MISSING,
    TensorBoardLog,
    close_tensorboard_logs,
    tensorboard_log,
    tensorboard_writer_class,
)

__all__ = [
    "CONFIG_FILE",
    "MAX_OPEN_WRITERS",
    "PATH_KEYS",
    "RELATIVE_PATHS",
    "SETUP_NAMES",
    "SPACE_ERRORS",
    "SPLITS_FOLDER",
    "STEP_KEYS",
    "TENSORBOARD_MISSING",
    "WEIGHT_SHAPING_KEYS",
    "GracefulStop",
    "NonFiniteGuard",
    "RunDir",
    "StopRequested",
    "TensorBoardLog",
    "close_tensorboard_logs",
    "files_under",
    "holds_work",
    "is_setup_file",
    "progress",
    "quiet",
    "relative_paths",
    "resolve_device",
    "say",
    "scalar_metrics",
    "seed_everything",
    "tensorboard_log",
    "tensorboard_writer_class",
    "work_files",
    "write_error",
]
