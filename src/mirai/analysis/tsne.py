"""t-SNE maps of one image's token states (the paper's Fig. 5/9), scored by their spatial smoothness.

For one image, the hidden state after GPT block ``l`` of every grid cell — the residual stream
at the position that has just read the cell's token — is embedded in 2-D with t-SNE. Each 2-D
point becomes a colour through a fixed bivariate colour map and is painted at its cell, so a
representation that is organised by where it is in the image gives a smooth field of colour
and one that is not gives speckle.

A picture cannot be compared across runs, so each map comes with a smoothness score: the mean
distance between 4-neighbour cells over the mean distance between any two cells (lower =
smoother; about 1 when the field has no spatial structure). It is reported for the map's
colours (what the figure shows) and for the states themselves (no t-SNE involved).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from mirai import checkpoint
from mirai.analysis.curves import run_labels
from mirai.data.codes import CodeStore
from mirai.data.options import non_negative_int, positive_float
from mirai.errors import ConfigError, DataError
from mirai.figures import check_figure_path, save_figure
from mirai.foresight.config import ForesightConfig
from mirai.models.gpt import GPT
from mirai.sampling.checks import check_seed
from mirai.sampling.grid import check_codes_tokenizer

Condition = Literal["null", "label"]


def class_inputs(gpt: GPT, labels: np.ndarray, condition: Condition) -> torch.Tensor:
    """The class input of each image: its label, or the null class (which needs a GPT trained with class dropout)."""
    if condition == "label":
        return torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if gpt.args.class_dropout_prob <= 0:
        raise ConfigError("this GPT was trained without class dropout, so it has no null class: use condition=label")
    return torch.full((len(labels),), gpt.args.num_classes, dtype=torch.int64)


@torch.no_grad()
def cell_states(gpt: GPT, tokens: torch.Tensor, classes: torch.Tensor, layer: int) -> torch.Tensor:
    """The block-``layer`` state (B, g*g, dim) of every grid cell of ``tokens`` (B, g*g) in raster order.

    Cell ``c``'s state is the one at the position that has just read the cell's token (docs/method.md
    §3): ``c + 1`` of ``[class, x_0, ..., x_{N-1}]`` in raster order, PAR's own position for a PAR
    model (``GPT.cell_states``), so the maps are drawn on the true grid cells either way.
    """
    args = gpt.args
    if not 1 <= layer <= args.n_layer:
        raise ConfigError(f"layer {layer} is outside the model's blocks 1..{args.n_layer}: give a block in that range")
    if tokens.shape[1:] != (args.seq_len,):
        raise DataError(f"expected (B, {args.seq_len}) tokens of a {args.grid_size}x{args.grid_size} grid, "
                        f"got {tuple(tokens.shape)}")
    return gpt.cell_states(tokens, classes, layer)


def image_states(gpt: GPT, store: CodeStore, indices: Sequence[int], layer: int,
                 condition: Condition, source: str | Path = "this checkpoint") -> torch.Tensor:
    """``cell_states`` of view 0 of the store's images ``indices``; ``source`` (the checkpoint's
    path) names the model when the store does not fit it."""
    args = gpt.args
    store.validate(vocab_size=args.vocab_size, grid_size=args.grid_size,
                   num_classes=args.num_classes if condition == "label" else None, model=str(source))
    indices = np.asarray(indices)
    device = next(gpt.parameters()).device
    tokens = torch.from_numpy(np.asarray(store.codes[indices, 0], dtype=np.int64).reshape(len(indices), -1))
    classes = class_inputs(gpt, store.labels[indices], condition)
    return cell_states(gpt, tokens.to(device), classes.to(device), layer)


def check_tsne_settings(perplexity: float, seed: int) -> None:
    """Refuse (``ConfigError``) a perplexity that is not a finite number above 0 and a seed outside [0, 2**32)
    (scikit-learn's and NumPy's seeds)."""
    positive_float(perplexity, "perplexity")
    check_seed(non_negative_int(seed, "seed"))


def tsne_embed(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE coordinates (PCA initialisation, so reruns give the same map).

    The perplexity is capped at a third of the points, so that small sets (an 8x8 grid) still embed.
    """
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, (len(features) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(np.asarray(features, dtype=np.float32))


def grid_colours(coords: np.ndarray) -> np.ndarray:
    """Colours (g, g, 3) in [0, 1] of 2-D points (g, g, 2), one per grid cell.

    Each axis is scaled to [0, 1] over the grid, then (x, y) -> (R, G, B) = (x, y, 1 - (x + y) / 2):
    the corners of the embedding are blue (0, 0), pink (1, 0), green (0, 1) and yellow (1, 1).
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise DataError(f"expected (g, g, 2) coordinates, got shape {xy.shape}")
    low = xy.min(axis=(0, 1))
    span = xy.max(axis=(0, 1)) - low
    xy = (xy - low) / np.where(span > 0, span, 1.0)
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([x, y, 1 - (x + y) / 2], axis=-1)


def smoothness(grid: np.ndarray) -> float:
    """Mean distance between 4-neighbour cells of a (g, g, D) field over the mean distance between any
    two of its cells: well below 1 for a spatially smooth field, about 1 for one without spatial structure."""
    from scipy.spatial.distance import pdist

    f = np.asarray(grid, dtype=np.float64)
    if f.ndim != 3 or f.shape[0] * f.shape[1] < 3:
        raise DataError(f"expected a (g, g, D) field of at least 3 cells, got shape {f.shape}")
    neighbours = np.concatenate([np.linalg.norm(f[1:] - f[:-1], axis=-1).ravel(),
                                 np.linalg.norm(f[:, 1:] - f[:, :-1], axis=-1).ravel()])
    pairs = pdist(f.reshape(-1, f.shape[-1])).mean()
    if pairs == 0:
        raise DataError("all cells of the field are identical: smoothness is undefined")
    return float(neighbours.mean() / pairs)


def colour_key(resolution: int = 64) -> np.ndarray:
    """The ``grid_colours`` map itself as a (resolution, resolution, 3) image: row 0 is the top (t-SNE
    dimension 2 high), column 0 the left (dimension 1 low), as the key is drawn."""
    axis = np.linspace(0.0, 1.0, resolution)
    x, y = np.meshgrid(axis, axis[::-1])
    return grid_colours(np.stack([x, y], axis=-1))


def plot_token_maps(images: list[tuple[str, np.ndarray]], maps: dict[str, list[np.ndarray]],
                    titles: dict[str, list[str]], out: str | Path) -> None:
    """One row per image: the image, then each checkpoint's colour map (g, g, 3) of it; a colour key at the
    right of the first row (a cell's colour is where its state lands in the 2-D t-SNE embedding). Written
    to ``out`` and a PDF beside it; titles are wrapped to their panel's width so none is clipped."""
    import textwrap

    from matplotlib.figure import Figure

    cols = 2 + len(maps)  # the image, the maps, the key
    panel = 2.6  # inches
    def wrap(text: str) -> str:
        return "\n".join(textwrap.fill(line, 30) for line in text.split("\n"))

    lines = max(wrap(t).count("\n") + 1 for ts in [*titles.values(), [c for c, _ in images]] for t in ts)
    # A single row needs 1 in more below for the key's explanation, else the layout clips the titles.
    extra = 1.0 if len(images) == 1 else 0.0
    fig = Figure(figsize=(panel * (cols - 1) + 1.9, (panel + 0.18 * lines + 0.2) * len(images) + extra),
                 layout="constrained")
    grid = fig.add_gridspec(len(images), cols, width_ratios=[panel] * (cols - 1) + [1.5])
    for row, (caption, pixels) in enumerate(images):
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(pixels)
        ax.set_title(wrap(caption), fontsize="small")
        for col, label in enumerate(maps, start=1):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(maps[label][row], interpolation="nearest")
            ax.set_title(wrap(titles[label][row]), fontsize="small")
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    key = fig.add_subplot(grid[0, -1])
    key.imshow(colour_key(), extent=(0, 1, 0, 1))
    key.set_title("colour key", fontsize="small")
    key.set_xlabel("t-SNE dim 1 →\n\na cell's colour: where its\nblock state lands in the\n2-D t-SNE of "
                   "the image's\ncells (alike colours =\nalike states)", fontsize="x-small")
    key.set_ylabel("t-SNE dim 2 →", fontsize="x-small")
    key.set_xticks([])
    key.set_yticks([])
    save_figure(fig, out)


def tsne_maps(checkpoints: Sequence[str | Path], codes: str | Path, out: str | Path,
              layers: Sequence[int | None] | None = None, image_indices: Sequence[int] = (0,),
              labels: Sequence[str] | None = None, condition: Condition = "label", use_ema: bool = True,
              perplexity: float = 30.0, seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """Draw every checkpoint's token map of each image into ``out``, write the smoothness scores beside it
    (``.json``) and return them.

    ``layers``: one GPT block per checkpoint; None (or a None entry) is the foresight default,
    2/3 of the depth. ``labels`` name the checkpoints (default: the shortest distinct path tails).
    """
    layers = list(layers) if layers is not None else [None] * len(checkpoints)
    labels = list(labels) if labels is not None else run_labels([Path(c) for c in checkpoints])
    if not checkpoints or len(layers) != len(checkpoints) or len(labels) != len(checkpoints):
        raise ConfigError(f"give at least one checkpoint and one layer and label per checkpoint; got "
                          f"{len(checkpoints)} checkpoints, {len(layers)} layers, {len(labels)} labels")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"checkpoint labels must differ, got {labels}")
    check_tsne_settings(perplexity, seed)
    check_figure_path(out)
    store = CodeStore.open(codes)
    bad = [i for i in image_indices if not 0 <= i < len(store)]
    if not image_indices or bad:
        raise DataError(f"image indices {bad or '[]'}: choose some in 0..{len(store) - 1} of {codes}")
    for path in checkpoints:  # all before the first map is computed
        check_codes_tokenizer(store.manifest, codes, path)
    maps, titles, scores = {}, {}, {}
    for path, layer, label in zip(checkpoints, layers, labels):
        gpt = checkpoint.load(path, GPT, use_ema=use_ema).to(device)
        layer = layer if layer is not None else ForesightConfig().resolve_layer(gpt.args.n_layer)
        g = gpt.args.grid_size
        states = image_states(gpt, store, image_indices, layer, condition, path).float().cpu().numpy().reshape(
            len(image_indices), g, g, -1)
        maps[label] = [grid_colours(tsne_embed(s.reshape(g * g, -1), seed, perplexity).reshape(g, g, 2))
                       for s in states]
        scores[label] = {"checkpoint": str(path), "layer": layer,
                         "smoothness": [smoothness(m) for m in maps[label]],
                         "smoothness_states": [smoothness(s) for s in states]}
        titles[label] = [f"{label}\nblock {layer}, smoothness {s:.3f}" for s in scores[label]["smoothness"]]
    images = [(f"image {i}: {store.class_names[store.labels[i]]}", store.source_image(i, 0)) for i in image_indices]
    plot_token_maps(images, maps, titles, out)
    report = {"codes": str(codes), "images": [int(i) for i in image_indices], "condition": condition,
              "weights": "ema" if use_ema else "raw", "perplexity": perplexity, "seed": seed, "maps": scores,
              "figure": str(out)}
    Path(out).with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report
