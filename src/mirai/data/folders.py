"""Class-folder image datasets (the ImageNet ``train/<wnid>/*.JPEG`` layout).

Classes are indexed by their sorted folder names, as LlamaGen, ADM and torchvision's
``ImageFolder`` do, so label 0 of a Mirai model means the same class as label 0 of theirs.
Images inside a class are found recursively and taken in sorted relative-path order,
which makes the per-class subset (``per_class=100``: the first 100 images of every class,
the paper's low-resource setting) deterministic on every machine.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from mirai.data.decode import read_rgb
from mirai.data.options import positive_int
from mirai.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "is_image_file", "read_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


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
                 per_class: int | None = None):
        self.root = Path(root)
        self.class_names = list(class_names)
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.per_class = per_class
        if len(self.files) != len(self.labels):
            raise DataError(f"{self.root}: {len(self.files)} files but {len(self.labels)} labels")

    @classmethod
    def scan(cls, root: str | Path, num_classes: int | None = None, per_class: int | None = None) -> "ImageFolder":
        """Index ``root``; ``num_classes`` is checked against the folder count when given."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a directory; give the folder "
                            "whose sub-folders are the classes")
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
                "point --root at the folder whose sub-folders are the classes, or fix num_classes"
            )
        files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(class_names):
            images = _sorted_images(root / name)
            if not images:
                raise DataError(f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            if per_class is not None:
                if len(images) < per_class:
                    warnings.warn(f"class {name!r} has only {len(images)} images (< per_class={per_class})")
                images = images[:per_class]
            files.extend(f"{name}/{f}" for f in images)
            labels.extend([label] * len(images))
        return cls(root, class_names, files, np.array(labels, dtype=np.int64), per_class)

    @classmethod
    def from_files(cls, root: str | Path, class_names: list[str], files: list[str],
                   per_class: int | None = None) -> "ImageFolder":
        """Rebuild a scanned folder from its file list (labels follow from the class folder)."""
        index = {name: i for i, name in enumerate(class_names)}
        try:
            labels = np.array([index[f.split("/", 1)[0]] for f in files], dtype=np.int64)
        except KeyError as err:
            raise DataError(f"file list names class {err} that is not among the {len(class_names)} classes") from None
        return cls(root, class_names, files, labels, per_class)

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> np.ndarray:
        """The ``index``-th image as uint8 ``(H, W, 3)`` RGB."""
        return read_rgb(self.root / self.files[index])

    def describe(self) -> dict:
        """JSON description from which the store reopens this dataset (file list kept separately)."""
        return {"kind": "folder", "root": str(self.root.resolve()), "per_class": self.per_class,
                "num_images": len(self)}
