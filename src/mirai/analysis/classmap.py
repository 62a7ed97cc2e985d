"""Class maps: t-SNE of whole images' pooled representations, scored by k-NN class accuracy.

Each image is one point: its grid cells' hidden states after a GPT block (``tsne.cell_states``)
are mean-pooled, and the points are embedded with t-SNE and coloured by class. The same can be
drawn for the foresight encoder's features, i.e. the representation Mirai-I aligns to. Each map
comes with the leave-one-out k-NN class accuracy of the pooled features (and of the 2-D map).

The class input defaults to the null class: a class-conditional GPT reads the label at
position 0, and every later state attends to it, so with the true label the pooled states
separate by class even in a model that has learned nothing about the images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mirai import checkpoint
from mirai.analysis.tsne import Condition, check_tsne_settings, image_states, tsne_embed
from mirai.data.codes import CodeStore
from mirai.data.options import positive_int
from mirai.errors import DataError
from mirai.figures import check_figure_path, save_figure
from mirai.models.gpt import GPT
from mirai.sampling.grid import check_codes_tokenizer


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out accuracy of a majority vote among each point's ``k`` nearest neighbours (Euclidean).

    Ties go to the lowest class id. Needs more than ``k`` points.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise DataError(f"expected (N, D) features and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) <= k:
        raise DataError(f"k-NN with k={k} needs more than {k} points, got {len(x)}")
    correct = 0
    for start in range(0, len(x), 1024):
        distances = torch.cdist(x[start:start + 1024], x)
        rows = torch.arange(distances.shape[0])
        distances[rows, rows + start] = float("inf")  # leave the point itself out
        neighbours = distances.topk(k, dim=1, largest=False).indices
        votes = torch.nn.functional.one_hot(y[neighbours], int(y.max()) + 1).sum(dim=1)
        correct += int((votes.argmax(dim=1) == y[start:start + 1024]).sum())
    return correct / len(x)


def balanced_subset(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of about ``count`` images, the same number from each class (all if ``count`` >= N)."""
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, count // len(classes))
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(picked))


def gpt_features(gpt: GPT, store: CodeStore, indices: np.ndarray, layer: int, condition: Condition = "null",
                 batch_size: int = 256, source: str | Path = "this checkpoint") -> np.ndarray:
    """Per image, the block-``layer`` states of view 0's grid cells, mean-pooled over the cells
    (``source``: the checkpoint's path, for errors)."""
    pooled = []
    for start in tqdm(range(0, len(indices), batch_size), desc=f"GPT block {layer}", unit="batch",
                      disable=None):
        states = image_states(gpt, store, indices[start:start + batch_size], layer, condition, source)
        pooled.append(states.float().mean(dim=1).cpu().numpy())
    return np.concatenate(pooled)


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, store: CodeStore, indices: np.ndarray,
                     batch_size: int = 256) -> np.ndarray:
    """Per image, a foresight encoder's grid features of view 0's pixels, mean-pooled over the grid."""
    device = next(encoder.parameters()).device
    pooled = []
    for start in tqdm(range(0, len(indices), batch_size), desc="encoder", unit="batch", disable=None):
        chunk = indices[start:start + batch_size]
        images = store.source_images(chunk, np.zeros_like(chunk)).to(device)
        pooled.append(encoder(images).mean(dim=1).cpu().numpy())
    return np.concatenate(pooled)


def plot_class_maps(maps: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str],
                    scores: dict[str, dict[str, float]], out: str | Path) -> None:
    """One scatter panel per map, points coloured by class (the key at the right), k-NN accuracies in the
    panel titles; written to ``out`` and a PDF beside it."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(maps), 5), layout="constrained")
    colours = colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    for i, (title, points) in enumerate(maps.items(), start=1):
        ax = fig.add_subplot(1, len(maps), i)
        for c, name in enumerate(class_names):
            mask = labels == c
            if mask.any():
                ax.scatter(points[mask, 0], points[mask, 1], s=4, color=colours(c % colours.N), label=name)
        s = scores[title]
        ax.set_title(f"{title}\n{s['k']}-NN acc: features {s['knn_features']:.3f}, map {s['knn_map']:.3f}",
                     fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(*fig.axes[-1].get_legend_handles_labels(), loc="outside right center", fontsize="small",
               markerscale=3, title="colour: class", title_fontsize="small")
    save_figure(fig, out)


def classmap_report(checkpoint_path: str | Path, codes: str | Path, layer: int, out: str | Path,
                    encoder: str | None = None, num_images: int = 2000, condition: Condition = "null",
                    use_ema: bool = True, k: int = 10, perplexity: float = 30.0, seed: int = 0,
                    device: str = "cpu") -> dict:
    """Draw the class map(s) into ``out``, write their k-NN accuracies beside it (``.json``) and return them.

    Every setting is checked (``ConfigError``/``DataError``) before any features are computed."""
    positive_int(num_images, "num_images")
    positive_int(k, "k")
    check_tsne_settings(perplexity, seed)
    check_figure_path(out)
    gpt = checkpoint.load(checkpoint_path, GPT, use_ema=use_ema).to(device)
    store = CodeStore.open(codes)
    check_codes_tokenizer(store.manifest, codes, checkpoint_path)
    indices = balanced_subset(store.labels, num_images, seed)
    if len(indices) <= k:
        raise DataError(f"k-NN with k={k} needs more than {k} images, but {codes} gives {len(indices)} "
                        f"(num_images={num_images}); lower --k or raise --num-images")
    labels = store.labels[indices]
    features = {f"GPT block {layer} ({condition} class)": gpt_features(gpt, store, indices, layer, condition,
                                                                        source=checkpoint_path)}
    if encoder is not None:
        from mirai.foresight.encoders import build_encoder

        net = build_encoder(encoder, store.grid_size, device=device)
        features[f"encoder {encoder}"] = encoder_features(net, store, indices)
    maps, scores = {}, {}
    for title, feats in features.items():
        maps[title] = tsne_embed(feats, seed, perplexity)
        scores[title] = {"k": k, "knn_features": knn_accuracy(feats, labels, k),
                         "knn_map": knn_accuracy(maps[title], labels, k)}
    plot_class_maps(maps, labels, store.class_names, scores, out)
    report = {"checkpoint": str(checkpoint_path), "weights": "ema" if use_ema else "raw", "codes": str(codes),
              "layer": layer, "condition": condition, "num_images": int(len(indices)), "maps": scores,
              "figure": str(out)}
    Path(out).with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report
