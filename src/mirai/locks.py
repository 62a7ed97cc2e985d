"""One process per output directory: an advisory ``fcntl`` lock on ``DIR/.lock``.

Two trainers in one run directory (a double launch, two ``--resume``) or two samplers into
one folder would interleave their outputs; the second one is refused at once instead. The
lock is released when the process ends, however it ends (``kill -9`` included), so a stale
lock file never blocks a later run.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mirai.errors import BusyError, cannot_create, under_file

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # directories this process holds, with their nesting depth


@contextmanager
def exclusive_dir(path: str | Path, what: str) -> Iterator[Path]:
    """Hold ``path`` (created if missing) for this process; ``what`` names it in the error.

    Re-entrant within a process (``train`` holds the run directory around ``Trainer.fit``,
    which holds it too). Raises ``BusyError`` naming the holder's pid when another process
    holds it; ``ConfigError`` when a level of ``path`` is a file or a broken link, or the system refuses
    to create it or the lock file (the reason named). A directory created here, with
    the parents created for it, is removed again when the block fails before anything but the
    lock was written in it (a refused start leaves nothing to clean up).
    """
    path = Path(path)
    created = _make_dirs(path, what)
    key = path.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # a folder without write permission, a read-only file system
        _remove_empty(created)
        raise cannot_create(what, path, path / LOCK_FILE, err) from None
    try:
        _lock_or_refuse(fd, path, what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[key] = 1
        try:
            yield path
        except BaseException:
            if path in created and {p.name for p in path.iterdir()} == {LOCK_FILE}:
                (path / LOCK_FILE).unlink()
            _remove_empty(created)
            raise
        finally:
            del _held[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock_or_refuse(fd: int, path: Path, what: str) -> None:
    """Take the lock of ``fd`` (``path``'s lock file), or ``BusyError`` naming the process that holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise BusyError(f"{what} {path} is in use by another mirai process (pid {holder}); wait for it to finish, "
                        "stop it, or choose another directory") from None


def check_not_held(path: str | Path, what: str) -> None:
    """``BusyError`` when another process holds ``path`` (``exclusive_dir``), without creating anything: for
    checks that must come before the lock file is made, whose own message would otherwise mislead (a run that
    has no checkpoint yet because another process is starting it)."""
    path = Path(path)
    if path.resolve() in _held:
        return
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file (never held), or not readable: the lock itself decides later
        return
    try:
        _lock_or_refuse(fd, path, what)
    finally:
        os.close(fd)


def _make_dirs(path: Path, what: str) -> list[Path]:
    """Create ``path`` one level at a time; the levels this call created, last made first.

    Recorded as they are made, not listed beforehand: with ``..`` in the path (``new/../old``) a
    level that is missing beforehand can name an existing folder once its parent exists."""
    created = []
    for level in reversed((path, *path.parents)):
        try:
            if level.is_dir():
                continue
            level.mkdir()
        except OSError as err:
            if isinstance(err, FileExistsError) and level.is_dir():  # made meanwhile by another process
                continue
            error = (under_file(what, path, level) if isinstance(err, FileExistsError)  # a file or a link
                     else cannot_create(what, path, level, err))
            _remove_empty(created[::-1])  # new/../file/x: "new" was made before the file was met
            raise error from None
        created.append(level)
    return created[::-1]


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (last made first) up to the first one that is not empty: another
    process may have put something in a parent meanwhile, and that is kept."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
