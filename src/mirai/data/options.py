"""Checks of the user-facing values that data and evaluation commands take.

The same function checks a value whether it comes from the command line (``--batch-size``)
or the Python API (``batch_size=``), so both refuse the same values with the same one-line
``ConfigError``. ``name`` is how the caller calls the value in the message.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch

from mirai.errors import ConfigError, DataError, refuse_under_file


# The largest --image-size-eval: evaluation protocols resize to 256 or 512 px; beyond this a typo
# (100000) would only fail after the sampling, on an allocation of terabytes.
IMAGE_SIZE_EVAL_MAX = 4096


def image_size_eval(value: object, name: str = "image_size_eval (--image-size-eval)") -> int:
    """A resize target in pixels: an integer in 1..``IMAGE_SIZE_EVAL_MAX``."""
    value = positive_int(value, name)
    if value > IMAGE_SIZE_EVAL_MAX:
        raise ConfigError(f"{name} must be at most {IMAGE_SIZE_EVAL_MAX} pixels (evaluation protocols use 256 or "
                          f"512), got {value}")
    return value


def whole_number(value: object, name: str) -> int:
    """``value`` if it is an integer (``bool`` is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return value


def positive_int(value: object, name: str) -> int:
    """``value`` if it is an integer of at least 1 (a count or a batch size)."""
    if whole_number(value, name) < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


def non_negative_int(value: object, name: str) -> int:
    """``value`` if it is an integer of at least 0 (e.g. a worker count, 0 = in this process)."""
    if whole_number(value, name) < 0:
        raise ConfigError(f"{name} must be 0 or more, got {value}")
    return value


def finite_float(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float if it is a finite number within ``[low, high]`` (bounds optional)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"{name} must lie in {span}, got {value!r}")
    return number


def positive_float(value: object, name: str) -> float:
    """``value`` as a float if it is a finite number above 0 (e.g. a learning rate)."""
    number = finite_float(value, name)
    if number <= 0:
        raise ConfigError(f"{name} must be above 0, got {value!r}")
    return number


def resolve_device(name: str | None) -> str:
    """The torch device to use: ``None``/``"auto"`` picks cuda when available, else cpu.

    Refuses (``ConfigError``) a string torch does not parse, a device kind other than
    cpu/cuda/mps, and a GPU that this machine does not have.
    """
    if name is None or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r} asked for a GPU but no CUDA device is available; use cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r}: MPS is not available on this machine; use cpu")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported here; use cpu, cuda or cuda:N")
    return str(device)


def existing_dir(path: str | Path, name: str) -> Path:
    """``path`` if it is an existing directory (``DataError`` otherwise)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{name} {path} does not exist; check the path")
    if not path.is_dir():
        raise DataError(f"{name} {path} is a file, not a directory; give the folder")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output_file(path: str | Path, name: str, inputs: Iterable[str | Path | None] = (),
                      overwrite: bool = True, suffixes: Iterable[str] | None = None,
                      usual_suffix: str = "") -> Path:
    """Refuse an output file that would land on a directory, on one of the ``inputs``, under a
    parent that is a file, or (without ``overwrite``) on an existing file; ``suffixes`` limits
    the file types, ``usual_suffix`` names the one the directory message suggests when they do
    not. Nothing is created: call this before any work."""
    path = Path(path)
    refuse_under_file(path, name, file=True)  # first: a name too long for the system fails every check below
    allowed = None if suffixes is None else [s.lower() for s in suffixes]
    if path.is_dir():
        # The example must pass the suffix check below, or following the advice fails again.
        example = path / ("out" + (allowed[0] if allowed else usual_suffix))
        raise ConfigError(f"{name} {path} is a directory; give a file name, e.g. {example}")
    if allowed is not None:
        if path.suffix.lower() not in allowed:
            raise ConfigError(f"{name} {path}: unknown file type {path.suffix or '(none)'!r}; "
                              f"end the name with one of {', '.join(allowed[:8])}")
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise ConfigError(f"{name} {path} is also an input of this command; writing it would destroy "
                              "the input: choose another file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"{name} {path} already exists; pass --overwrite to replace it or choose another name")
    return path
