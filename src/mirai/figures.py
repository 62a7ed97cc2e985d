"""Writing figures: every figure goes out as the file asked for (PNG by default) and as a PDF beside it,
so the same picture can be looked at and put in a paper; and the labelled sample grid every command draws.

matplotlib is imported inside the functions (through its object-oriented ``Figure`` API, which needs no
display and no global state), so importing this module costs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mirai.data.options import check_output_file
from mirai.errors import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150
MAX_GRID_ROWS = 20  # classes drawn in one sample-grid figure; more would make a figure nobody can read


def check_figure_path(out: str | Path) -> Path:
    """``out`` if a figure can be written there: a file (not a folder) whose suffix matplotlib knows,
    under no file. Raises ``ConfigError``; call it before any work."""
    from matplotlib.backend_bases import FigureCanvasBase

    known = (f".{kind}" for kind in FigureCanvasBase.get_supported_filetypes())
    suffixes = dict.fromkeys([".png", ".pdf", ".svg", *known])  # the usual ones first, in the message too
    return check_output_file(out, "out", suffixes=list(suffixes))


# No date stamped into the file: a figure redrawn from the same records is the same file (PNG carries none).
_NO_DATE = {".pdf": {"CreationDate": None}, ".svg": {"Date": None}}


def figure_paths(out: str | Path) -> list[Path]:
    """The files ``save_figure`` writes for ``out``: ``out`` itself and, unless it is one, a PDF beside it."""
    out = Path(out)
    return [out] if out.suffix.lower() == ".pdf" else [out, out.with_suffix(".pdf")]


def save_figure(fig: Figure, out: str | Path, dpi: int = DPI) -> list[Path]:
    """Write ``fig`` to ``out`` (format from its suffix) and to ``out`` with a ``.pdf`` suffix; returns the paths."""
    paths = figure_paths(out)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path in paths:
        fig.savefig(path, dpi=dpi, metadata=_NO_DATE.get(path.suffix.lower()))
    return paths


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    """The dataset's name of class ``label``, or ``class N`` (the ImageNet index) when the names are unknown."""
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return f"class {label}"


def class_rows(images: np.ndarray, labels: np.ndarray, per_row: int = 10,
               max_rows: int = MAX_GRID_ROWS) -> tuple[list[tuple[int, np.ndarray]], int]:
    """The images grouped by class, in order of first appearance: up to ``per_row`` of each of the first
    ``max_rows`` classes, as [(label, (k, H, W, 3))], and the number of classes there were in all."""
    images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels) or not len(images):
        raise DataError(f"expected a non-empty uint8 (N, H, W, 3) batch and N labels, got {images.shape} "
                        f"{images.dtype} images and {labels.shape} labels")
    order = list(dict.fromkeys(int(c) for c in labels))
    return [(c, images[labels == c][:per_row]) for c in order[:max_rows]], len(order)


def sample_grid_figure(images: np.ndarray, labels: np.ndarray, title: str,
                       class_names: Sequence[str] | None = None, per_row: int = 10) -> Figure:
    """A grid of samples, one row per class (at most ``MAX_GRID_ROWS``) named at its left, under ``title``.

    ``images``: uint8 (N, H, W, 3); ``labels``: the N class ids. Small images are drawn enlarged
    with nearest-neighbour interpolation, so every image pixel stays a crisp square.
    """
    from matplotlib.figure import Figure

    rows, classes = class_rows(images, labels, per_row)
    if classes > len(rows):
        title += f"\n(first {len(rows)} of {classes} classes)"
    h, w = images.shape[1:3]
    scale = max(1, math.ceil(48 / h))  # at least 48 screen pixels per image
    cols = max(len(r) for _, r in rows)
    tile_w, tile_h = w * scale / DPI, h * scale / DPI
    names = [class_name(c, class_names) for c, _ in rows]
    label_w = 0.1 + 0.075 * max(len(n) for n in names)  # inches for the row names at 9 pt
    title_h = 0.22 * (title.count("\n") + 1) + 0.15
    content_w = label_w + cols * tile_w * 1.04
    # At least as wide as the title (about 0.075 in per character at 9 pt); the grid is centred.
    width = max(content_w, 0.075 * max(len(line) for line in title.split("\n"))) + 0.2
    margin = (width - content_w) / 2
    fig = Figure(figsize=(width, title_h + len(rows) * tile_h * 1.04 + 0.1))
    top = 1 - title_h / fig.get_figheight()
    grid = fig.add_gridspec(len(rows), cols, left=(margin + label_w) / width, right=1 - margin / width, top=top,
                            bottom=0.1 / fig.get_figheight(), wspace=0.04, hspace=0.04)
    for r, ((_, row), name) in enumerate(zip(rows, names)):
        for c in range(cols):
            ax = fig.add_subplot(grid[r, c])
            ax.set_axis_off()
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
        fig.axes[-cols].text(-0.08, 0.5, name, transform=fig.axes[-cols].transAxes, ha="right", va="center",
                             fontsize=9)
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / fig.get_figheight(), va="top")
    return fig


def save_sample_grid(images: np.ndarray, labels: np.ndarray, out: str | Path, title: str,
                     class_names: Sequence[str] | None = None, per_row: int = 10) -> list[Path]:
    """``sample_grid_figure`` written to ``out`` and a PDF beside it; returns the paths."""
    return save_figure(sample_grid_figure(images, labels, title, class_names, per_row), out)
