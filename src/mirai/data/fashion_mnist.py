"""Fashion-MNIST from its four official IDX files, with no dependency beyond NumPy.

Where the files come from, first match wins:

1. the ``root`` argument,
2. the ``MIRAI_FASHION_MNIST`` environment variable,
3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package),
4. ``~/.cache/mirai/fashion-mnist``, downloading the official gzip files there if they are
   missing (MD5-checked against the checksums Zalando publishes).

A folder may hold the files gzipped (``*.gz``) or already decompressed. Every file is
parsed by ``parse_idx``, which checks the header against the byte count so a truncated or
foreign file is reported by name instead of surfacing later as garbage pixels.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from mirai.data.options import positive_int
from mirai.errors import DataError

ENV_VAR = "MIRAI_FASHION_MNIST"
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
URL_BASE = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# split -> (images file, labels file), without the ".gz" suffix.
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# MD5 of the official gzip files, as published in the fashion-mnist README. Debian's package
# ships the same deflate streams with the gzip header's file name and time replaced (each .gz
# is 23-24 bytes shorter), so its .gz files hash differently: restoring the original header
# (FNAME set, mtime 2017-08-31) to Debian's files reproduces all four published MD5s. The
# second table, of the decompressed IDX bytes, therefore checks a copy from any source.
GZIP_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
IDX_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four "
    f"*-ubyte.gz files from {URL_BASE} into a folder and set {ENV_VAR}=that/folder"
)

# IDX type code -> big-endian NumPy dtype (the format stores numbers most-significant byte first).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def read_idx_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (recognised by its magic bytes)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path} is a corrupt or truncated gzip file ({err}); delete it and fetch it again"
        ) from None


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array in native byte order; ``name`` is used in error messages."""
    fix = "delete it and fetch it again"
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name} is not an IDX file (bad magic number {data[:4].hex()!r}); {fix}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX data type 0x{code:02x}; {fix}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions; {fix}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated inside its header ({len(data)} bytes); {fix}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{name} is {state}: header declares shape {dims} ({expected} bytes) but the file has "
            f"{len(data)} bytes; {fix}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _has_all(folder: Path) -> bool:
    return all(_find(folder, stem) for pair in FILES.values() for stem in pair)


def cache_dir() -> Path:
    """Where downloaded files go: ``$XDG_CACHE_HOME/mirai/fashion-mnist`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mirai" / "fashion-mnist"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def download(dest: str | Path, timeout: float = 60.0) -> Path:
    """Fetch the four official gzip files into ``dest`` (skipping good ones), MD5-verified."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stem in tqdm([s for pair in FILES.values() for s in pair], desc="download fashion-mnist", unit="file",
                     disable=None):
        target = dest / f"{stem}.gz"
        if target.is_file() and _md5(target.read_bytes()) == GZIP_MD5[stem]:
            continue
        url = URL_BASE + f"{stem}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as err:
            raise DataError(f"Fashion-MNIST was not found locally and downloading {url} failed ({err}); "
                            + INSTALL_HINT) from None
        if _md5(data) != GZIP_MD5[stem]:
            raise DataError(
                f"{url} downloaded with MD5 {_md5(data)}, expected {GZIP_MD5[stem]} (damaged download "
                f"or a changed upstream file); retry, or " + INSTALL_HINT
            )
        # Write beside the target and rename, so an interrupted download never looks complete.
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", dir=dest)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    return dest


def resolve_root(root: str | Path | None = None, allow_download: bool = True) -> Path:
    """The folder holding the Fashion-MNIST files, following the order in the module docstring."""
    explicit = root if root is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        folder = Path(explicit)
        source = "root argument" if root is not None else f"${ENV_VAR}"
        if not _has_all(folder):
            missing = [s for pair in FILES.values() for s in pair if not _find(folder, s)]
            raise DataError(f"{folder} (from the {source}) lacks the Fashion-MNIST file(s) {missing}; "
                            + INSTALL_HINT)
        return folder
    for folder in (DEBIAN_ROOT, cache_dir()):
        if _has_all(folder):
            return folder
    if not allow_download:
        raise DataError("Fashion-MNIST was not found; " + INSTALL_HINT)
    return download(cache_dir())


def _load_checked(folder: Path, stem: str) -> np.ndarray:
    path = _find(folder, stem)
    data = read_idx_bytes(path)
    if _md5(data) != IDX_MD5[stem]:
        raise DataError(
            f"{path} parses to MD5 {_md5(data)}, not the official Fashion-MNIST {stem} ({IDX_MD5[stem]}); "
            "it is damaged or a different dataset: replace it, or " + INSTALL_HINT
        )
    return parse_idx(data, str(path))


def load_fashion_mnist(
    split: Literal["train", "test"], root: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (N, 28, 28)`` (0 = background) and labels ``int64 (N,)`` in 0..9."""
    if split not in FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    folder = resolve_root(root)
    image_stem, label_stem = FILES[split]
    images = _load_checked(folder, image_stem)
    labels = _load_checked(folder, label_stem).astype(np.int64)
    return images, labels


class FashionMNIST:
    """One split as a dataset of 32×32 RGB images (see ``mirai.data.transforms``).

    ``per_class=K`` keeps the first K images of each class in file order, like the class-folder
    datasets' low-resource subset; ``DataError`` if a class has fewer (6 000 in train, 1 000 in test).
    """

    def __init__(self, split: Literal["train", "test"], root: str | Path | None = None,
                 per_class: int | None = None):
        if per_class is not None:
            positive_int(per_class, "per_class (--per-class)")
        images, labels = load_fashion_mnist(split, root)
        if per_class is not None:
            fewest = int(np.bincount(labels, minlength=len(CLASS_NAMES)).min())
            if per_class > fewest:
                raise DataError(f"--per-class {per_class} is more than the {fewest} images of each class in "
                                f"Fashion-MNIST's {split} split: give at most {fewest}, or leave it out for all")
            keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASS_NAMES))]))
            images, labels = images[keep], labels[keep]
        self.split, self.root, self.per_class = split, root, per_class
        self.images, self.labels = images, labels
        self.class_names = list(CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        """The ``index``-th image, padded to uint8 ``(32, 32, 3)``."""
        from mirai.data.transforms import fashion_mnist_to_rgb

        return fashion_mnist_to_rgb(self.images[index])

    def describe(self) -> dict:
        """JSON description to reopen this split; ``root`` stays None when it was found automatically,
        so a store moved to another machine finds the (MD5-checked) files there the same way."""
        return {"kind": "fashion-mnist", "root": None if self.root is None else str(Path(self.root).resolve()),
                "split": self.split, "per_class": self.per_class, "num_images": len(self)}
