"""Image grids for looking at data, reconstructions and samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, nrow: int = 8, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 ``(N, H, W, 3)`` images (or grey ``(N, H, W)``) into one uint8 ``(H', W', 3)`` array,
    ``nrow`` images per row, separated and framed by ``padding`` pixels of ``pad_value``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}; convert with mirai.data.transforms.to_uint8_hwc")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected a non-empty (N, H, W, 3) or (N, H, W) batch, got shape {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, _ = images.shape
    cols = max(1, min(nrow, n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, 3), pad_value, np.uint8)
    for i, image in enumerate(images):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def save_image_grid(images: np.ndarray, nrow: int, path: str | Path, padding: int = 2,
                    pad_value: int = 255) -> Path:
    """Write ``image_grid(images, nrow, ...)`` to ``path`` (format from the suffix, e.g. ``.png``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow, padding, pad_value)).save(path)
    return path
