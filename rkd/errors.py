"""Errors the command line reports as one line (no traceback)."""
from pipelines import ConfigError

__all__ = ["ConfigError", "RkdError"]


class RkdError(ConfigError):
    """Bad input found by the application (checkpoints, run directories, flags)."""
