"""User-facing errors: one line saying what is wrong and what to do; the CLI turns them into exit code 2."""

from __future__ import annotations


class BisslError(Exception):
    """An error the user can fix (bad config, missing data, wrong checkpoint). Its message is one line."""

    exit_code = 2


class ConfigError(BisslError):
    """A config key, value or type is wrong."""


class DataError(BisslError):
    """A dataset is missing, corrupted or malformed."""


class CheckpointError(BisslError):
    """A checkpoint is missing, truncated, foreign or incompatible."""


class NonFiniteError(BisslError):
    """Training met too many consecutive non-finite values and stopped."""
