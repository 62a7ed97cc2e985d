"""The views of each image whose VQ codes are extracted, and their exact pixels.

``ten_crop`` (ImageNet-like data, LlamaGen's ``extract_codes_c2i.py --ten-crop``):

1. ADM's ``center_crop_arr`` to ``crop_size = int(image_size * crop_ratio)`` (281 for 256 px at
   the default ratio 1.1 — LlamaGen truncates, so we do too, to get the same crops);
2. torchvision's ``TenCrop(image_size)``: ``five_crop`` (top-left, top-right, bottom-left,
   bottom-right, centre) of that square, then ``five_crop`` of its horizontal mirror.

Views 5..9 are crops *of the mirrored image*, not mirrored crops: view 5 (top-left of the
mirror) shows the same pixels as view 1 (top-right) flipped, and when ``crop_size - image_size``
is odd the mirrored centre crop sits one pixel away from the plain one.

``flip`` (Fashion-MNIST and other small data): ``center_crop_arr`` to ``image_size`` (a no-op
when the image already has that size) and its horizontal mirror.

``render_view`` is the single place that produces view pixels: extraction encodes its output
and the Mirai-I foresight encoder is later fed its output for the same (image, view), so both
see the same bytes. Resizing uses Pillow, whose filters have been stable for years, but a
store records the Pillow version that made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from mirai.config import from_dict, to_dict
from mirai.data.decode import to_rgb
from mirai.data.options import IMAGE_SIZE_EVAL_MAX
from mirai.errors import ConfigError


# At 2, each corner crop already covers only a quarter of the centre square.
MAX_CROP_RATIO = 2.0


@dataclass(frozen=True)
class ViewSpec:
    """Which views of an image exist, in code-row order. JSON-serialisable via ``to_dict``.

    ``ten_crop``: top-left, top-right, bottom-left, bottom-right and centre crops, then the
    same five of the mirrored image; ``flip``: the image, then its mirror.
    """

    kind: Literal["ten_crop", "flip"]
    image_size: int
    crop_ratio: float = 1.1

    def validate(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"views: image_size (--image-size) must be positive, got {self.image_size}")
        if not math.isfinite(self.crop_ratio):
            raise ConfigError(f"views: crop_ratio (--crop-ratio) must be a finite number, got {self.crop_ratio}")
        if self.kind == "ten_crop" and self.crop_ratio < 1.0:
            raise ConfigError(f"views: crop_ratio (--crop-ratio) must be at least 1.0 (got {self.crop_ratio}); "
                              "the corner crops are cut from a square larger than the image size")
        # Upper bounds: a typo (1e6) would otherwise resize every image to millions of pixels and hang.
        if self.image_size > IMAGE_SIZE_EVAL_MAX:
            raise ConfigError(f"views: image_size (--image-size) must be at most {IMAGE_SIZE_EVAL_MAX} pixels "
                              f"(LlamaGen trains at 256 or 384), got {self.image_size}")
        if self.kind == "ten_crop" and self.crop_ratio > MAX_CROP_RATIO:
            raise ConfigError(f"views: crop_ratio (--crop-ratio) must be at most {MAX_CROP_RATIO} (ADM and LlamaGen "
                              f"use 1.1), got {self.crop_ratio}")

    @property
    def num_views(self) -> int:
        return 10 if self.kind == "ten_crop" else 2

    @property
    def crop_size(self) -> int:
        """Side of the centre-cropped square the views are cut from."""
        return int(self.image_size * self.crop_ratio) if self.kind == "ten_crop" else self.image_size

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ViewSpec":
        return from_dict(cls, data, "views")


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop: BOX-halve while the short side is ≥ 2·size (cheap anti-aliasing),
    BICUBIC-resize so the short side is ``size``, then cut the central ``size``×``size`` square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top:top + size, left:left + size])


def _five_crop_box(height: int, width: int, size: int, index: int) -> tuple[int, int]:
    """(top, left) of torchvision's ``five_crop`` crop ``index`` (same centre rounding)."""
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size)]
    if index < 4:
        return corners[index]
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def _base(image: np.ndarray | Image.Image, spec: ViewSpec) -> np.ndarray:
    """The centre-cropped square (uint8 HWC) that every view of ``spec`` is cut from."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    elif image.mode != "RGB":
        image = Image.fromarray(to_rgb(image))  # the same faithful conversion as image files get
    return np.asarray(center_crop_arr(image, spec.crop_size))


def _cut(base: np.ndarray, view: int, spec: ViewSpec) -> np.ndarray:
    if spec.kind == "flip":
        return (base[:, ::-1] if view == 1 else base).copy()
    source = base[:, ::-1] if view >= 5 else base
    size = spec.image_size
    top, left = _five_crop_box(source.shape[0], source.shape[1], size, view % 5)
    return source[top:top + size, left:left + size].copy()  # writable, contiguous, owns its memory


def _check_view(view: int, spec: ViewSpec) -> None:
    if not 0 <= view < spec.num_views:
        raise IndexError(f"view {view} out of range: a {spec.kind} spec has {spec.num_views} views")


def render_view(image: np.ndarray | Image.Image, view: int, spec: ViewSpec) -> np.ndarray:
    """The uint8 ``(image_size, image_size, 3)`` pixels of view ``view`` of an RGB image."""
    _check_view(view, spec)
    return _cut(_base(image, spec), view, spec)


def render_views(image: np.ndarray | Image.Image, spec: ViewSpec) -> np.ndarray:
    """All views of an image, uint8 ``(num_views, image_size, image_size, 3)``; the resize runs once."""
    base = _base(image, spec)
    return np.stack([_cut(base, v, spec) for v in range(spec.num_views)])
