"""The one reader of every ``.npz`` file that evaluation opens (sample and reference batches).

Arrays are loaded with ``allow_pickle=False``: an object array (pickled Python objects, which
can run code when unpickled) is refused, never loaded. Every way a file can be wrong — missing,
a directory, not a zip, a bare ``.npy``, truncated, pickled, lacking an array — raises one
``DataError`` that names the file and says what to do, instead of a traceback.
"""

from __future__ import annotations

import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from mirai.errors import DataError

READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
FIX = ("write it with np.savez/np.savez_compressed from plain numeric arrays (no object arrays), "
       "or with `mirai sample` / `mirai evaluate make-ref`")


class NpzArchive:
    """An ``.npz`` file opened safely; ``what`` (e.g. "sample batch") names its role in errors.

    Use as a context manager, or call ``close``. ``array`` loads one array whole; ``header``
    and ``member`` let large image arrays be streamed without loading them.
    """

    def __init__(self, path: str | Path, what: str = ".npz file") -> None:
        self.path, self.what = Path(path), what
        if not self.path.exists():
            raise DataError(f"{what} {self.path} does not exist; check the path")
        if self.path.is_dir():
            raise DataError(f"{what} {self.path} is a directory, not an .npz file; give the file itself")
        with self.errors():
            with open(self.path, "rb") as file:
                magic = file.read(6)
            if not magic.startswith(b"PK") and magic != b"\x93NUMPY":  # else np.load guesses "pickled data"
                raise DataError(f"{what} {self.path} is not an .npz archive (not a zip of .npy arrays); {FIX}")
            loaded = np.load(self.path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{what} {self.path} is a single .npy array, not an .npz archive; "
                            "save it with np.savez(path, arr_0=array)")
        self._npz = loaded

    @contextmanager
    def errors(self, key: str | None = None) -> Iterator[None]:
        """Turn a read failure inside the block into a ``DataError`` naming the file (and array)."""
        try:
            yield
        except READ_ERRORS as err:
            where = f"{self.what} {self.path}" + (f", array {key!r}," if key else "")
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"{where} cannot be read ({detail}); {FIX}") from None

    @property
    def keys(self) -> list[str]:
        return list(self._npz.files)

    def __contains__(self, key: str) -> bool:
        return key in self._npz.files

    def _require(self, key: str, hint: str = "") -> None:
        if key not in self:
            raise DataError(f"{self.what} {self.path} has no {key!r} array (it holds {self.keys}){hint}")

    def array(self, key: str, hint: str = "") -> np.ndarray:
        """Array ``key``, loaded whole; ``hint`` is appended to the message when it is missing."""
        self._require(key, hint)
        with self.errors(key):
            return np.asarray(self._npz[key])

    def header(self, key: str, hint: str = "") -> tuple[tuple[int, ...], bool, np.dtype]:
        """(shape, fortran_order, dtype) of array ``key`` without reading its data."""
        with self.member(key, hint) as (shape, fortran, dtype, _):
            return shape, fortran, dtype

    @contextmanager
    def member(self, key: str, hint: str = "") -> Iterator[tuple[tuple[int, ...], bool, np.dtype, IO[bytes]]]:
        """(shape, fortran_order, dtype, stream positioned at the data) of array ``key``; read
        failures inside the block become ``DataError`` too."""
        self._require(key, hint)
        with self.errors(key), self._npz.zip.open(f"{key}.npy") as stream:
            version = np.lib.format.read_magic(stream)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran, dtype = readers[version](stream)
            if dtype.hasobject:
                raise ValueError("it holds pickled Python objects (an object array)")
            yield shape, fortran, dtype, stream

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> "NpzArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def integer_labels(labels: np.ndarray, source: str, count: int | None = None) -> np.ndarray:
    """``labels`` as int64 ``(N,)`` if they are whole numbers (and ``count`` of them when given)."""
    if labels.dtype.kind not in "iu":
        raise DataError(f"{source}: 'labels' holds {labels.dtype} values; class labels must be integers "
                        "(save them as int64)")
    labels = labels.astype(np.int64).reshape(-1)
    if count is not None and len(labels) != count:
        raise DataError(f"{source}: 'labels' has {len(labels)} entries but there are {count} images; "
                        "save one label per image")
    return labels
