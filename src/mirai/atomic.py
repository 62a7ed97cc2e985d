"""Directories published whole: written under a temporary name and renamed into place, so that a crash or a
full disk never leaves half a checkpoint or code store where a good one was, and tidied after a writer is killed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from mirai.errors import FULL_DISK, cannot_create


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmpdir)`` and move the finished directory to ``path`` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as err:  # before any work: a folder the system will not write into (/proc, read-only)
        if err.errno in FULL_DISK:
            raise  # the command line's one-line message for a full disk
        raise cannot_create("output folder", path, f"a folder in {path.parent}", err) from None
    # mkdtemp and safetensors make files private; published ones get the usual 0666/0777 less the umask.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        write(tmp)
        for f in tmp.iterdir():  # make the data durable before the rename publishes it
            f.chmod(0o666 & ~umask)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, OSError) and "No space left on device" in str(err):  # safetensors' own error type
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    return path


def recover_interrupted_writes(folder: str | Path) -> list[str]:
    """Tidy ``folder`` after writers that were killed inside ``atomic_write_dir``; call it only
    while no other process writes there (e.g. under the run-directory lock).

    A temporary ``.NAME.tmp-*`` directory never became a checkpoint and is removed; a
    ``.NAME.old-PID`` directory is the previous ``NAME`` and is moved back when the kill came
    between the two renames (``NAME`` missing), else removed. Returns what was done, one line each.
    """
    folder, done = Path(folder), []
    if not folder.is_dir():
        return done
    for entry in sorted(folder.iterdir()):
        match = re.fullmatch(r"\.(.+)\.(tmp-.+|old-\d+)", entry.name)
        if match is None or not entry.is_dir():
            continue
        target = folder / match.group(1)
        if match.group(2).startswith("old-") and not target.exists():
            os.replace(entry, target)
            done.append(f"restored {target} from an interrupted replacement")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry}, left by an interrupted write")
    return done
