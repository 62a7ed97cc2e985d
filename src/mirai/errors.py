"""Errors that the command line reports as one clear line instead of a traceback.

Each message says what is wrong and what to do about it.
"""

import os
from pathlib import Path


class MiraiError(Exception):
    """Base class for user-facing errors."""


class ConfigError(MiraiError, ValueError):
    """A config file or override is malformed, names an unknown key, or holds a bad value."""


class CheckpointError(MiraiError):
    """A checkpoint is missing, corrupt, unsafe, or does not match the requested model."""


class DataError(MiraiError):
    """A dataset or code store is missing, corrupt, or does not match the config."""


class TrainingError(MiraiError):
    """Training cannot continue (for example a NaN loss); the last good checkpoint is kept."""


class BusyError(MiraiError):
    """Another process is writing to the same run or output directory."""


def under_file(name: str, path: object, level: object) -> ConfigError:
    """The error for output ``path`` (``name`` says which output) when its level ``level`` is a file or a
    broken symbolic link: nothing can be created there. Shared by the checks made before a start and
    while folders are created, so that both say the same."""
    link = Path(level)
    what = (f"is a broken symbolic link (to {os.readlink(link)})" if link.is_symlink() and not link.exists()
            else "is a file")
    where = f"{name} {path}" if Path(path) == link else f"{name} {path}: {level}"
    return ConfigError(f"{where} {what}, so nothing can be written there; choose another location")


class Interrupted(KeyboardInterrupt):
    """A run stopped on a signal after saving what it had; ``signum`` gives the exit status
    128 + signum (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str = "", hint: str = ""):
        super().__init__("; ".join(part for part in (message, hint) if part))
        self.signum, self.message, self.hint = signum, message, hint
