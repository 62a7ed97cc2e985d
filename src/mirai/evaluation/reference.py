"""ADM-format ``.npz`` files: sample batches and reference batches.

**Sample batch** (written by ``mirai sample``, read here): ``arr_0`` uint8 ``(N, H, W, 3)``,
plus ``labels`` ``(N,)`` (the class each image was generated for) and ``tokens``.

**Reference batch** — the keys of ADM's ``VIRTUAL_imagenet256_labeled.npz`` and friends,
all optional except that either images or statistics must be present:

=============  ==========================================================================
``arr_0``      uint8 ``(N, H, W, 3)`` reference images
``mu``         ``(2048,)`` mean of Inception pool_3 features
``sigma``      ``(2048, 2048)`` their covariance
``mu_s``       ``(2023,)`` mean of the spatial (``mixed_6/conv``) features, for sFID
``sigma_s``    ``(2023, 2023)`` their covariance
=============  ==========================================================================

ADM stores no activations: its evaluator re-runs Inception on ``arr_0`` to get them for
precision/recall. Files written by ``mirai evaluate make-ref`` add, so that no network
has to run on the reference again:

=====================  ==================================================================
``pool``, ``logits``   Inception pool features ``(N, 2048)`` and unbiased logits ``(N, 1008)``
``labels``             ``(N,)`` class labels, when known
``fashion_*``          the same statistics and activations from the Fashion-MNIST
                       evaluator (``fashion_mu``, ``fashion_sigma``, ``fashion_pool``,
                       ``fashion_logits``); no spatial features
``meta``               a JSON string: which network (weights fingerprint) made each set
=====================  ==================================================================

ADM's evaluator reads such a file unchanged (it looks only at ``arr_0`` and the statistics).
Every file is read through ``mirai.evaluation.npz`` (``allow_pickle=False``; any unreadable,
pickled or misshapen content is a one-line ``DataError`` naming the file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mirai.data.options import image_size_eval, positive_int
from mirai.data.transforms import FLOAT_TO_UINT8
from mirai.errors import DataError
from mirai.evaluation.npz import NpzArchive, integer_labels

IMAGES_KEY = "arr_0"
# Per evaluator, the key prefix of its statistics; Inception's are ADM's own unprefixed names.
PREFIXES = {"inception": "", "fashion": "fashion_"}
_FIELDS = ("mu", "sigma", "mu_s", "sigma_s", "pool", "logits")


class NpzImages:
    """Batches of ``arr_0`` streamed from an ``.npz`` without loading the whole array.

    A 50 000 × 256² batch is ~10 GB; reading it slice by slice from the zip member keeps
    memory at one batch. Arrays stored in Fortran order (rare) are loaded whole instead.
    ``what`` names the file's role ("sample batch", "reference batch") in error messages.
    ``resize``: hand out every image resized to ``resize``² (``resize_uint8``), as LlamaGen's
    ``--image-size-eval``; ``resolution`` then reports that size.
    """

    def __init__(self, path: str | Path, key: str = IMAGES_KEY, what: str = "image batch",
                 resize: int | None = None) -> None:
        self.path, self.key, self.what = Path(path), key, what
        self.resize = None if resize is None else image_size_eval(resize)
        hint = f"; an ADM batch keeps its images in {key!r}"
        with NpzArchive(self.path, what) as archive:
            self.shape, self.fortran_order, self.dtype = archive.header(key, hint)
        if self.dtype == np.uint8 and len(self.shape) == 4 and self.shape[0] == 0:
            raise DataError(f"{what} {self.path}: {key!r} holds no images (shape {self.shape}); write it again "
                            "with the images in it")
        if self.dtype != np.uint8 or len(self.shape) != 4 or self.shape[-1] != 3 or 0 in self.shape:
            raise DataError(f"{what} {self.path}: {key!r} must be uint8 (N, H, W, 3) images, got {self.dtype} "
                            f"{self.shape}; convert floats with {FLOAT_TO_UINT8} "
                            "and grey images with np.repeat(x[..., None], 3, -1)")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def resolution(self) -> tuple[int, int]:
        return (self.resize, self.resize) if self.resize is not None else (self.shape[1], self.shape[2])

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive ``(≤batch_size, H, W, 3)`` uint8 arrays covering all images in order (resized
        when ``resize`` is set)."""
        for batch in self._stored_batches(batch_size):
            yield batch if self.resize is None else resize_uint8(batch, self.resize)

    def _stored_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        batch_size = positive_int(batch_size, "batch_size (--batch-size)")
        with NpzArchive(self.path, self.what) as archive:
            if self.fortran_order:
                images = np.ascontiguousarray(archive.array(self.key))
                yield from (images[i:i + batch_size] for i in range(0, len(images), batch_size))
                return
            image_bytes = int(np.prod(self.shape[1:]))
            with archive.member(self.key) as (*_, member):
                for start in range(0, len(self), batch_size):
                    count = min(batch_size, len(self) - start)
                    data = member.read(count * image_bytes)
                    if len(data) != count * image_bytes:
                        raise DataError(f"{self.what} {self.path}: {self.key!r} is truncated (ended inside image "
                                        f"{start + len(data) // image_bytes}); write the file again")
                    yield np.frombuffer(data, dtype=np.uint8).reshape(count, *self.shape[1:])


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` images resized to ``(N, size, size, 3)``: bicubic (``torch.nn.functional.
    interpolate``, as LlamaGen's sample_c2i ``--image-size-eval``), then rounded and clipped to 0..255.
    LlamaGen resizes the decoder's float output before rounding; ``mirai sample --image-size-eval``
    does exactly that, this works on images already stored as uint8."""
    import torch

    if images.shape[1:3] == (size, size):
        return images
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()  # a copy: batches are read-only views
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_labels(path: str | Path, count: int | None = None, what: str = "image batch") -> np.ndarray | None:
    """The ``labels`` array of an ``.npz`` as int64, or None if absent; checked against ``count``."""
    with NpzArchive(path, what) as archive:
        if "labels" not in archive:
            return None
        labels = archive.array("labels")
    return integer_labels(labels, f"{what} {path}", count)


@dataclass
class FeatureSet:
    """What one feature network says about one image set; any field may be missing."""

    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    pool: np.ndarray | None = None
    logits: np.ndarray | None = None

    @classmethod
    def from_features(cls, features: dict[str, np.ndarray]) -> "FeatureSet":
        """Statistics and activations from a network's outputs (``pool``, ``logits``, optional ``spatial``)."""
        from mirai.evaluation.metrics import feature_statistics

        mu, sigma = feature_statistics(features["pool"])
        mu_s, sigma_s = feature_statistics(features["spatial"]) if "spatial" in features else (None, None)
        return cls(mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, pool=features["pool"],
                   logits=features.get("logits"))


@dataclass
class Reference:
    """A reference batch: its path, whether it holds images, labels, per-network features and provenance."""

    path: Path
    num_images: int | None
    resolution: tuple[int, int] | None
    labels: np.ndarray | None
    features: dict[str, FeatureSet] = field(default_factory=dict)
    # network name -> {"fingerprint": ..., "weights": ...}; empty for ADM's own files.
    networks: dict[str, dict] = field(default_factory=dict)

    def images(self) -> NpzImages:
        if self.num_images is None:
            raise DataError(f"reference {self.path} has no images ({IMAGES_KEY!r}), only statistics")
        return NpzImages(self.path, what="reference batch")


def _feature_set(path: Path, network: str, arrays: dict[str, np.ndarray]) -> FeatureSet:
    """The statistics and activations of one network, checked to be numbers of matching sizes."""
    prefix, fix = PREFIXES[network], "remake it with `mirai evaluate make-ref`"
    for name, value in arrays.items():
        want = {"mu": 1, "mu_s": 1}.get(name, 2)
        if value.dtype.kind not in "fiu" or value.ndim != want or not np.isfinite(value).all():
            raise DataError(f"reference batch {path}: {prefix + name!r} must be a finite {want}-D array of numbers, "
                            f"got {value.dtype} {value.shape}; {fix}")
    for mean, cov in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if (mean in arrays) != (cov in arrays):
            raise DataError(f"reference batch {path} has {prefix + (mean if mean in arrays else cov)!r} without "
                            f"{prefix + (cov if mean in arrays else mean)!r}; {fix}")
        if mean in arrays and arrays[cov].shape != (len(arrays[mean]),) * 2:
            raise DataError(f"reference batch {path}: {prefix + cov!r} {arrays[cov].shape} does not match "
                            f"{prefix + mean!r} {arrays[mean].shape}; {fix}")
    if "pool" in arrays and "mu" in arrays and arrays["pool"].shape[1] != len(arrays["mu"]):
        raise DataError(f"reference batch {path}: {prefix}pool has {arrays['pool'].shape[1]} features but "
                        f"{prefix}mu {len(arrays['mu'])}; {fix}")
    return FeatureSet(**arrays)


def _read_meta(archive: NpzArchive) -> dict:
    meta = archive.array("meta")
    try:
        parsed = json.loads(str(meta)) if meta.dtype.kind == "U" and meta.ndim == 0 else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("networks", {}), dict):
        raise DataError(f"reference batch {archive.path}: 'meta' is not the JSON text make-ref writes; "
                        "remake the file with `mirai evaluate make-ref`, or drop 'meta' from it")
    return parsed


def read_reference(path: str | Path) -> Reference:
    """Read a reference ``.npz`` (ADM's or ours); statistics are loaded, images only opened."""
    path = Path(path)
    with NpzArchive(path, "reference batch") as archive:
        features = {}
        for network, prefix in PREFIXES.items():
            present = {name: archive.array(prefix + name) for name in _FIELDS if prefix + name in archive}
            if present:
                features[network] = _feature_set(path, network, present)
        meta = _read_meta(archive) if "meta" in archive else {}
        has_images = IMAGES_KEY in archive
    images = NpzImages(path, what="reference batch") if has_images else None
    if images is None and not features:
        raise DataError(f"{path} holds neither images ({IMAGES_KEY!r}) nor statistics (mu/sigma): "
                        "not a reference batch; make one with `mirai evaluate make-ref`")
    num_images = len(images) if images is not None else None
    labels = read_labels(path, num_images, "reference batch")
    return Reference(path, num_images, images.resolution if images is not None else None, labels,
                     features, meta.get("networks", {}))


def write_reference(path: str | Path, features: dict[str, FeatureSet], networks: dict[str, dict],
                    images: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
    """Write a reference ``.npz`` with ADM's key names (see the module docstring)."""
    arrays: dict[str, np.ndarray] = {}
    if images is not None:
        arrays[IMAGES_KEY] = np.ascontiguousarray(images, dtype=np.uint8)
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    for network, feature_set in features.items():
        for name in _FIELDS:
            value = getattr(feature_set, name)
            if value is not None:
                arrays[PREFIXES[network] + name] = value
    arrays["meta"] = np.array(json.dumps({"format": "mirai-reference", "version": 1, "networks": networks}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.savez adds ".npz" to names without it; write to a temporary name and rename so a
    # crash never leaves a half-written reference at the final path.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")  # per process: parallel bench shares
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path
