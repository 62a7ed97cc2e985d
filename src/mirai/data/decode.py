"""Decoding image files to the uint8 RGB pixels every other part of Mirai works on.

A plain ``Image.convert("RGB")`` is wrong for several modes Pillow opens: it clips 16-bit
grey to 255 (mid-grey becomes white), maps float images to black, and drops alpha so that
whatever colour lies under transparent pixels shows. ``to_rgb`` converts each mode by a
stated rule and refuses, with a ``DataError`` naming the file and its mode, any other:

=======================  ===================================================================
mode                     rule
=======================  ===================================================================
RGB, L, 1, P, YCbCr,     Pillow's conversion (exact for RGB/L/1/P; JPEG's YCbCr matrix;
HSV, RGBX, CMYK          CMYK by Pillow's formula ``(255 - C)(255 - K) / 255``, no ICC profile)
RGBA, LA, PA, RGBa,      composited over ``ALPHA_BACKGROUND`` (white):
or any mode with a       ``round((c·a + 255·(255 - a)) / 255)``
transparent colour
I;16, I;16L/B/N          16-bit levels scaled to 8 bits: ``round(v / 257)`` (32896 → 128)
I (32-bit integer)       read as 16-bit levels (how Pillow opens 16-bit PGM/PPM data); values
                         outside 0..65535 are refused
F (32-bit float)         intensities in [0, 1]: ``round(255 · v)``; other values (NaN
                         included) are refused
anything else (LAB, La)  refused
=======================  ===================================================================

Pillow's 16-bit RGB(A) files arrive already reduced to 8 bits (their high byte). An
animated or multi-page file gives its first frame. EXIF orientation is not applied, as in
torchvision's and ADM's loaders, so pixels match the reference pipelines.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from mirai.errors import DataError

ALPHA_BACKGROUND = 255  # white: transparent pixels become (255, 255, 255)
_PILLOW_CONVERTS = {"RGB", "L", "1", "P", "YCbCr", "HSV", "RGBX", "CMYK"}
_WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa"}
_HIGH_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def _refuse(name: str, mode: str, why: str) -> DataError:
    return DataError(f"image {name} has mode {mode}, {why}; convert it to 8-bit RGB (or remove it) and re-run")


def _grey_to_uint8(image: Image.Image, name: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image as uint8 ``(H, W)`` by the module's rules."""
    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise _refuse(name, "F", f"with values in [{values.min():g}, {values.max():g}] "
                          "(float images are read as intensities in [0, 1], without NaN)")
        return np.rint(values * 255).astype(np.uint8)
    values = values.astype(np.int64)
    if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise _refuse(name, "I", f"with values in [{values.min()}, {values.max()}] (32-bit integer images "
                      "are read as 16-bit levels 0..65535)")
    return ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257), in integers


def _composite(rgba: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 4)`` composited over ``ALPHA_BACKGROUND``, rounded to the nearest level."""
    colour = rgba[..., :3].astype(np.int64)
    alpha = rgba[..., 3:].astype(np.int64)
    mixed = colour * alpha + ALPHA_BACKGROUND * (255 - alpha)
    return ((mixed + 127) // 255).astype(np.uint8)


def to_rgb(image: Image.Image, name: str = "<image>") -> np.ndarray:
    """``image`` (any mode Pillow opens) as uint8 ``(H, W, 3)`` by the rules in the module
    docstring; ``DataError`` naming ``name`` and the mode for a mode there is no faithful rule for."""
    mode = image.mode
    if mode in _HIGH_DEPTH:
        if "transparency" in image.info:
            raise _refuse(name, mode, "with a transparent colour key, which has no 8-bit equivalent")
        return np.repeat(_grey_to_uint8(image, name)[..., None], 3, axis=-1)
    if mode in _WITH_ALPHA or (mode in _PILLOW_CONVERTS and "transparency" in image.info):
        with warnings.catch_warnings():
            # Pillow suggests RGBA for palette transparency, which is what this does.
            warnings.simplefilter("ignore", UserWarning)
            return _composite(np.asarray(image.convert("RGBA")))
    if mode in _PILLOW_CONVERTS:
        return np.asarray(image.convert("RGB"))
    raise _refuse(name, mode, "which Mirai has no faithful RGB conversion for")


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 ``(H, W, 3)`` RGB with ``to_rgb``; ``DataError`` naming the
    file when it is unreadable or of a mode that cannot be converted faithfully."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, str(path))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}; remove or replace the file") from None
