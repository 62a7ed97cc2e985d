"""Which view of each image an epoch uses: a hash of (seed, epoch, image), so that any worker,
process, DDP rank or resumed run draws the same view without sharing random-number state."""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on uint64 arrays: a cheap, well-spread 64-bit hash."""
    with np.errstate(over="ignore"):  # the arithmetic is meant to wrap modulo 2**64
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _views(seed: int, epoch: int, indices: np.ndarray, num_views: int) -> np.ndarray:
    key = _splitmix64(_splitmix64(np.uint64(seed & _MASK64)) ^ np.uint64(epoch & _MASK64))
    return (_splitmix64(key ^ indices.astype(np.uint64)) % np.uint64(num_views)).astype(np.int64)


def random_view(seed: int, epoch: int, index: int, num_views: int) -> int:
    """The view of image ``index`` used in ``epoch``: a pure function of its arguments, so any
    worker, process, DDP rank or resumed run draws the same view without sharing RNG state."""
    return int(_views(seed, epoch, np.array([index]), num_views)[0])


def epoch_views(seed: int, epoch: int, n: int, num_views: int) -> np.ndarray:
    """``random_view`` of images ``0..n-1`` at once, int64 ``(n,)`` (1.28 M images in ~50 ms)."""
    return _views(seed, epoch, np.arange(n), num_views)
