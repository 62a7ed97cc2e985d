"""Class-folder image datasets (the ImageNet ``train/<wnid>/*.JPEG`` layout).

Classes are indexed by their sorted folder names, as LlamaGen, ADM and torchvision's
``ImageFolder`` do, so label 0 of a Mirai model means the same class as label 0 of theirs.
Images inside a class are found recursively and taken in sorted relative-path order. A
per-class subset (``per_class=100``, the paper's low-resource setting, appendix F / Table 14)
is the first K of that order, or, with ``subset_seed``, K drawn at random: each image's key is
SHA-256 of (seed, path) and the K smallest keys win. The draw depends only on the seed and the
file names (no random-number library whose streams might change), so it is the same on every
machine, and adding an image to a class can only swap that one image in.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from mirai.data.decode import read_rgb
from mirai.data.options import non_negative_int, positive_int
from mirai.errors import ConfigError, DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "is_image_file", "read_rgb", "seeded_subset"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


def is_image_file(name: str) -> bool:
    """Whether a file name ends in one of ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def seeded_subset(paths: list[str], k: int, seed: int) -> list[str]:
    """``k`` of ``paths`` chosen by ``seed`` (the smallest SHA-256 keys of ``"seed:path"``), in sorted order;
    ``ImageFolder.scan`` passes each class's paths under the dataset root (``class/file``)."""
    keyed = sorted(paths, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())
    return sorted(keyed[:k])


def _sorted_images(class_dir: Path) -> list[str]:
    """Image paths under ``class_dir`` relative to it, in sorted order (walk followed into links)."""
    found = []
    for current, dirs, files in os.walk(class_dir, followlinks=True):
        dirs.sort()
        rel = Path(current).relative_to(class_dir)
        found.extend((rel / f).as_posix() for f in files if is_image_file(f))
    return sorted(found)


class ImageFolder:
    """Images under ``root/<class>/...``, labelled by the sorted index of their class folder.

    ``files`` holds paths relative to ``root``; a store keeps this list so that the same image
    order can be re-opened without rescanning (``ImageFolder.from_files``).
    """

    def __init__(self, root: str | Path, class_names: list[str], files: list[str], labels: np.ndarray,
                 per_class: int | None = None, subset_seed: int | None = None):
        self.root = Path(root)
        self.class_names = list(class_names)
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.per_class, self.subset_seed = per_class, subset_seed
        if len(self.files) != len(self.labels):
            raise DataError(f"{self.root}: {len(self.files)} files but {len(self.labels)} labels")

    @classmethod
    def scan(cls, root: str | Path, num_classes: int | None = None, per_class: int | None = None,
             subset_seed: int | None = None) -> "ImageFolder":
        """Index ``root``; ``num_classes`` is checked against the folder count when given.

        ``per_class=K`` keeps K images of every class: the first K in sorted order, or K drawn
        with ``subset_seed`` (``seeded_subset``). A class with fewer than K images is a
        ``DataError``: taking all of them would quietly unbalance the subset.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a directory; give the folder "
                            "whose sub-folders are the classes")
        if subset_seed is not None:
            if per_class is None:
                raise ConfigError("subset_seed (--subset-seed) chooses which per_class images are kept; "
                                "give per_class (--per-class) too, or drop the seed")
            non_negative_int(subset_seed, "subset_seed (--subset-seed)")
        if per_class is not None:
            positive_int(per_class, "per_class (--per-class)")
        if num_classes is not None:
            positive_int(num_classes, "num_classes (--num-classes)")
        class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not class_names:
            raise DataError(f"{root} has no class sub-folders; expected the layout {root}/<class>/<image>")
        if num_classes is not None and len(class_names) != num_classes:
            raise DataError(
                f"{root} has {len(class_names)} class folders but {num_classes} classes are expected; "
                "point --data-root at the folder whose sub-folders are the classes, or fix num_classes"
            )
        files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(class_names):
            images = [f"{name}/{f}" for f in _sorted_images(root / name)]  # paths under root, still sorted
            if not images:
                raise DataError(f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            if per_class is not None:
                if len(images) < per_class:
                    raise DataError(f"class folder {root / name} holds {len(images)} images, fewer than "
                                    f"per_class={per_class}; choose --per-class {len(images)} or less, or add images")
                images = images[:per_class] if subset_seed is None else seeded_subset(images, per_class, subset_seed)
            files.extend(images)
            labels.extend([label] * len(images))
        return cls(root, class_names, files, np.array(labels, dtype=np.int64), per_class, subset_seed)

    @classmethod
    def from_files(cls, root: str | Path, class_names: list[str], files: list[str],
                   per_class: int | None = None, subset_seed: int | None = None) -> "ImageFolder":
        """Rebuild a scanned folder from its file list (labels follow from the class folder)."""
        index = {name: i for i, name in enumerate(class_names)}
        try:
            labels = np.array([index[f.split("/", 1)[0]] for f in files], dtype=np.int64)
        except KeyError as err:
            raise DataError(f"file list names class {err} that is not among the {len(class_names)} classes") from None
        return cls(root, class_names, files, labels, per_class, subset_seed)

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> np.ndarray:
        """The ``index``-th image as uint8 ``(H, W, 3)`` RGB."""
        return read_rgb(self.root / self.files[index])

    def describe(self) -> dict:
        """JSON description from which the store reopens this dataset (file list kept separately)."""
        return {"kind": "folder", "root": str(self.root.resolve()), "per_class": self.per_class,
                "subset_seed": self.subset_seed, "num_images": len(self)}
