"""Errors that the command line reports as one clear line instead of a traceback.

Each message says what is wrong and what to do about it.
"""

import errno
import os
import tempfile
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
    """The error for output ``path`` (``name`` says which output) when its level ``level`` is a file, a
    broken symbolic link or a link loop: nothing can be created there. Shared by the checks made before
    a start and while folders are created, so that both say the same."""
    link = Path(level)
    what = "is a file"
    if link.is_symlink():
        try:
            os.stat(link)
        except OSError as err:  # a chain of links is named by where it ends
            what = ("is a symbolic link loop" if err.errno == errno.ELOOP
                    else f"is a broken symbolic link (to {os.path.realpath(link)})")
    where = f"{name} {path}" if Path(path) == link else f"{name} {path}: {level}"
    return ConfigError(f"{where} {what}, so nothing can be written there; choose another location")


# A full disk or quota: the command line reports it in one line naming the file (cli.main), so the checks and
# writers below let it through instead of calling it a place where nothing can be created.
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def cannot_create(name: str, path: object, level: object, err: OSError) -> ConfigError:
    """The error for output ``path`` when the system refuses to make or inspect its level ``level``
    (no permission, a read-only file system, a name too long, a disk full)."""
    return ConfigError(f"{name} {path}: cannot create {level} ({err.strerror or err}); choose another location")


def refuse_under_file(path: Path, name: str, *, file: bool = False, folder: str = "folder",
                      probe: bool = True) -> None:
    """``ConfigError`` when a folder of output ``path`` could not be created: a level is a file, a broken
    symbolic link or a link loop, or the system refuses to look at it. Levels are walked as folder creation
    meets them, so ``new/../file/x`` is refused while ``new`` is missing (it would be made a real folder,
    and ``..`` leads back). ``path`` itself is to be a folder (``folder`` says which kind, for the error
    when it is a file); with ``file``, it is to be a file and is refused only for a name the system
    cannot take (writing through a dangling link to a file works); an existing folder there is left to
    the caller, which says what it expected. ``probe``: also refuse a place where the system creates nothing
    (``_probe_creation``); off for a folder a command may only read (a bench's ``runs_dir`` under ``--report``)."""
    level = Path(path.anchor)
    parts = path.parts[1:] if path.anchor else path.parts
    missing = False
    existing = level if path.anchor else Path(".")  # the deepest folder that exists: where creation starts
    name_max = os.pathconf(path.anchor or ".", "PC_NAME_MAX")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == ".." and missing:
            level, missing = level.parent, False  # where ".." leads from the made folder: look afresh
        else:
            level = level / part
        if len(os.fsencode(part)) > name_max:  # below a missing folder the system cannot say so yet
            raise cannot_create(name, path, level, OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)))
        if missing:
            continue
        try:
            if last and file:  # only a name the system cannot take (too long) is refused here
                level.exists()
                continue
            if level.is_symlink() and not level.exists():
                raise under_file(name, path, level)
            if not level.exists():
                missing = True
            elif last and not level.is_dir():
                raise ConfigError(f"{name} {path} is a file, not a {folder}; choose another location")
            elif not level.is_dir():
                raise under_file(name, path, level)
            else:
                existing = level
        except OSError as err:
            raise cannot_create(name, path, level, err) from None
    if probe:
        _probe_creation(existing, name, path)


def _probe_creation(folder: Path, name: str, path: Path) -> None:
    """``ConfigError`` when the system will not create anything in ``folder`` (/proc, a read-only file system),
    found before any work by making and removing an empty folder there; a full disk is left to the command
    line's own message."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mirai-probe-", dir=folder))
    except OSError as err:
        if err.errno in FULL_DISK:
            return  # the write itself reports it, naming the file
        raise cannot_create(name, path, f"anything in {folder}", err) from None


class Interrupted(KeyboardInterrupt):
    """A run stopped on a signal after saving what it had; ``signum`` gives the exit status
    128 + signum (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str = "", hint: str = ""):
        super().__init__("; ".join(part for part in (message, hint) if part))
        self.signum, self.message, self.hint = signum, message, hint
