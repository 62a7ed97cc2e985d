"""Sample grids as figures: one row per class named at its left, titled with what was sampled and how.

The trainer (``RUN/samples/*.png``), the bench (``grid_VARIANT.png``) and ``mirai sample``
(``OUT/grid.png``) all draw through ``write_sample_grid``, each beside a PDF of the same figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from mirai.checkpoint import read_meta
from mirai.data.codes import MANIFEST
from mirai.errors import DataError
from mirai.figures import save_sample_grid

TRAIN_CONFIG = "train_config.yaml"  # written into every training checkpoint (training.state.CONFIG_FILE)


def settings_caption(settings) -> str:
    """``guidance 2, temperature 1, top-k off, top-p off`` for a ``SampleSettings`` (and its guidance interval)."""
    parts = [f"guidance {settings.cfg_scale:g}"]
    if settings.guidance_interval is not None:
        parts[0] += " on tokens {:g}–{:g}".format(*settings.guidance_interval)
    parts += [f"temperature {settings.temperature:g}",
              f"top-k {settings.top_k if settings.top_k else 'off'}",
              f"top-p {settings.top_p:g}" if settings.top_p is not None else "top-p off"]
    return ", ".join(parts)


def grid_title(what: str, step: int | None, settings) -> str:
    """Two lines: what was sampled (and at which training step), then how (``settings_caption``)."""
    return what + (f", step {step}" if step is not None else "") + "\n" + settings_caption(settings)


def checkpoint_label(path: str | Path) -> str:
    """A short name for a checkpoint in a title: ``RUN`` for ``RUN/checkpoints/step_N`` (the step is given
    apart), else the file or folder name (``c2i_B_256.pt``)."""
    path = Path(path)
    return path.parent.parent.name if path.parent.name == "checkpoints" and path.parent.parent.name else path.name


def training_store_manifest(path: str | Path) -> dict | None:
    """The manifest of the code store a Mirai training checkpoint was trained on (``data.codes`` of the
    ``train_config.yaml`` beside its weights), when both are still here; None otherwise, nothing raised."""
    try:
        codes = (yaml.safe_load((Path(path) / TRAIN_CONFIG).read_text()) or {})["data"]["codes"]
        manifest = json.loads((Path(codes) / MANIFEST).read_text())
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    return manifest if isinstance(manifest, dict) else None


def trained_tokenizer(path: str | Path) -> dict:
    """The tokenizer a Mirai training checkpoint records of its training codes: ``sha256`` of the weights that
    made them (the raw or, with ``ema``, the EMA ones) and their ``path`` then. {} for a checkpoint without the
    record (a LlamaGen file, a checkpoint saved before it was recorded): nothing to check against."""
    try:
        entry = read_meta(path).get("tokenizer")
    except (OSError, ValueError, AttributeError):
        return {}
    return entry if isinstance(entry, dict) and entry.get("sha256") else {}


def check_codes_tokenizer(store_manifest: dict, codes: str | Path, checkpoint: str | Path) -> None:
    """``DataError`` when the code store ``codes`` (its ``store_manifest``) was extracted with another tokenizer
    (weights' hash) than the GPT ``checkpoint``'s training codes (``trained_tokenizer``): its token ids would mean
    other patches to that GPT. Nothing is checked when either record is missing."""
    trained = trained_tokenizer(checkpoint)
    given = store_manifest.get("tokenizer") or {}
    if not (trained and given.get("sha256")):
        return
    if trained["sha256"] != given["sha256"]:  # the same weights extracted as raw or EMA are the same tokenizer
        raise DataError(f"{codes} was extracted with another tokenizer ({given.get('path')}) than the codes "
                        f"{checkpoint} was trained on ({trained.get('path')}), so its token ids mean other patches "
                        f"to this GPT; extract the images with mirai extract --tokenizer {trained.get('path')}")


def checkpoint_details(path: str | Path) -> tuple[int | None, list[str] | None]:
    """(training step, class names) of a Mirai training checkpoint, as far as they can be read: the step from
    its ``config.json`` meta, the names from the manifest of the code store it was trained on. Either is None
    when unknown (a LlamaGen file, a checkpoint without its training store here); nothing is raised."""
    path = Path(path)
    step = names = None
    try:
        step = read_meta(path).get("step")
    except (OSError, ValueError, AttributeError):
        pass
    names = (training_store_manifest(path) or {}).get("class_names")
    return (step if isinstance(step, int) else None), (names if isinstance(names, list) else None)


def write_sample_grid(images: np.ndarray, labels: np.ndarray, out: str | Path, what: str, step: int | None,
                      settings, class_names: Sequence[str] | None = None, per_row: int = 10) -> list[Path]:
    """Draw ``images`` (uint8 (N, H, W, 3)) with their ``labels`` (N,) as a class-per-row grid titled by
    ``grid_title(what, step, settings)`` into ``out`` and a PDF beside it; class names default to
    ``class N`` (ImageNet indices). Returns the written paths."""
    return save_sample_grid(images, labels, out, grid_title(what, step, settings), class_names, per_row)
