"""Images: the Fashion-MNIST pixel convention, value ranges, image grids, and every PIL image mode read faithfully."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mirai.data.folders import ImageFolder
from mirai.data.images import image_grid, save_image_grid
from mirai.data.transforms import (
    fashion_mnist_to_rgb,
    to_model_range,
    to_uint8_hwc,
    to_unit_range,
)
from mirai.data.views import ViewSpec, render_view


def test_fashion_mnist_convention_and_ranges():
    grey = np.random.default_rng(1).integers(1, 256, (2, 28, 28), dtype=np.uint8)
    rgb = fashion_mnist_to_rgb(grey)
    assert rgb.shape == (2, 32, 32, 3)
    assert np.array_equal(rgb[:, 2:30, 2:30, 1], grey)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (rgb[:, border] == 0).all()
    x = to_model_range(rgb)
    assert x.shape == (2, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8_hwc(x), rgb)
    assert np.array_equal(to_uint8_hwc(to_unit_range(rgb[0]), (0.0, 1.0))[0], rgb[0])
    assert float(to_unit_range(np.full((1, 1, 3), 255, np.uint8)).min()) == 1.0


def test_image_grid(tmp_path):
    images = np.stack([np.full((4, 5, 3), i * 40, np.uint8) for i in range(5)])
    grid = image_grid(images, nrow=3, padding=1, pad_value=7)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3)
    assert (grid[1:5, 1 + 6:6 + 6] == 40).all() and (grid[6:10, 1:6] == 120).all()
    assert (grid[0] == 7).all() and (grid[6:10, 13:18] == 7).all()  # the missing sixth tile is padding
    path = save_image_grid(images, 3, tmp_path / "sub" / "g.png", padding=1, pad_value=7)
    assert np.array_equal(np.asarray(Image.open(path)), grid)


# ------------------------------------------------------------------------------------ image modes
def _mode_image(mode: str) -> Image.Image:
    """A 2x2 image of ``mode`` whose top-left pixel is a known value (see MODE_CASES)."""
    if mode.startswith("P"):
        image = Image.fromarray(np.array([[1, 0], [0, 1]], np.uint8), "P")
        image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
        return image
    arrays = {"I;16": (32896, np.uint16), "I": (32896, np.int32), "F": (0.5, np.float32), "L": (128, np.uint8),
              "1": (True, bool)}
    if mode in arrays:
        return Image.fromarray(np.full((2, 2), *arrays[mode]))
    values = {"RGB": (10, 20, 30), "RGBA": (10, 20, 30, 128), "LA": (128, 0), "CMYK": (0, 0, 0, 128),
              "YCbCr": (128, 128, 128)}
    return Image.new(mode, (2, 2), values[mode])


# (mode, file format, expected top-left RGB): 16-bit scaled by 1/257, floats read in [0, 1], alpha
# composited over white, CMYK by (255 - C)(255 - K) / 255, JPEG's YCbCr matrix.
MODE_CASES = [("I;16", "PNG", 128), ("I;16", "TIFF", 128), ("I", "TIFF", 128), ("F", "TIFF", 128),
              ("L", "PNG", 128), ("1", "PNG", 255), ("P", "PNG", (10, 20, 30)), ("P+t", "PNG", (10, 20, 30)),
              ("RGB", "PNG", (10, 20, 30)), ("RGBA", "PNG", (132, 137, 142)), ("LA", "PNG", 255),
              ("CMYK", "TIFF", 127), ("YCbCr", "TIFF", 128)]


@pytest.mark.parametrize("mode, fmt, want", MODE_CASES, ids=[f"{m}-{f}" for m, f, _ in MODE_CASES])
def test_every_image_mode_is_read_faithfully(tmp_path, mode, fmt, want):
    root = tmp_path / "data"
    (root / "c").mkdir(parents=True)
    path = root / "c" / f"x.{fmt.lower()}"
    _mode_image(mode).save(path, fmt, **({"transparency": 0} if mode == "P+t" else {}))
    data = ImageFolder.scan(root)
    pixels = data.image(0)
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 2, 3)
    assert pixels[0, 0].tolist() == list(np.broadcast_to(want, 3)), Image.open(path).mode
    if mode == "P+t":  # the transparent palette entry becomes the white background
        assert pixels[0, 1].tolist() == [255, 255, 255]
    with Image.open(path) as opened:  # a view rendered from the PIL image sees the same pixels
        assert np.array_equal(render_view(opened, 0, ViewSpec("flip", 2)), pixels)
