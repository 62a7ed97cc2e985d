"""Pixel conventions shared by extraction, training, foresight encoders and sampling.

* Images on disk and in views are ``uint8`` HWC (``N, H, W, 3`` for batches), RGB.
* The VQ tokenizer and the GPT see ``float32 (N, 3, H, W)`` in ``[-1, 1]``
  (``to_model_range``); foresight encoders such as DINOv2 start from ``[0, 1]``
  (``to_unit_range``). Both are exact affine maps of the uint8 values, so the same uint8
  view always gives the same model input.
* Fashion-MNIST's 28×28 grey images are padded with 2 px of background (0, black) to
  32×32, a multiple of the tokenizer's downsampling factor, and replicated to 3 channels.
"""

from __future__ import annotations

import numpy as np
import torch

FASHION_MNIST_PAD = 2


def fashion_mnist_to_rgb(images: np.ndarray) -> np.ndarray:
    """``uint8 (28, 28)`` or ``(N, 28, 28)`` grey → ``uint8 (32, 32, 3)`` / ``(N, 32, 32, 3)`` RGB."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[-2:] != (28, 28):
        raise ValueError(f"expected uint8 (..., 28, 28) Fashion-MNIST images, got {images.dtype} {images.shape}")
    pad = [(0, 0)] * (images.ndim - 2) + [(FASHION_MNIST_PAD, FASHION_MNIST_PAD)] * 2
    padded = np.pad(images, pad, mode="constant", constant_values=0)
    return np.repeat(padded[..., None], 3, axis=-1)


# How to turn float pixels in [0, 1] into the uint8 that every image input here takes (for error messages).
FLOAT_TO_UINT8 = "np.clip(x * 255, 0, 255).round().astype(np.uint8)"


def as_pixel_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor of ``images`` as given (a tensor unchanged, anything NumPy reads copied), dtype unchecked."""
    # torch.tensor copies, so read-only arrays (e.g. np.asarray of a PIL image, memory maps) are fine.
    return images if isinstance(images, torch.Tensor) else torch.tensor(np.asarray(images))


def _as_nchw_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HWC/NHWC (NumPy or torch) → float32 NCHW with values 0..255, adding a batch dim if needed."""
    x = as_pixel_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) or (N, H, W, 3) pixels, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float()


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HWC/NHWC → float32 ``(N, 3, H, W)`` in ``[-1, 1]`` (the tokenizer's input)."""
    return _as_nchw_float(images) / 127.5 - 1.0


def to_unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HWC/NHWC → float32 ``(N, 3, H, W)`` in ``[0, 1]`` (the foresight encoder's input), on the
    input's device, with the same bits on every device."""
    x = _as_nchw_float(images)
    # A divisor on the tensor's own device: CUDA turns a Python-number divisor into a multiplication
    # by its reciprocal, one ulp off the CPU's true division for some pixel values.
    return x / torch.tensor(255.0, device=x.device)


def to_uint8_hwc(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """float ``(3, H, W)`` or ``(N, 3, H, W)`` in ``value_range`` → uint8 ``(N, H, W, 3)``.

    Values are clipped and rounded to the nearest level, so ``to_uint8_hwc(to_model_range(x))``
    returns ``x`` exactly (truncation would turn float error like 254.99997 into 254).
    """
    x = images.detach().float().cpu()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (3, H, W) or (N, 3, H, W) images, got shape {tuple(x.shape)}")
    low, high = value_range
    x = ((x - low) * (255.0 / (high - low))).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
