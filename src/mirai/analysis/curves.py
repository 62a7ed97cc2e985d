"""Training curves of several runs from their ``metrics.jsonl``: one panel per metric, one line per run."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Sequence

from mirai.data.options import check_output_file, existing_dir
from mirai.errors import DataError
from mirai.training.metrics import read_metrics

HEAD_LOSS = re.compile(r"^(\w+)/loss(\d+)$")  # one auxiliary head's loss: foresight/loss0, foresight/loss1, ...
Curves = dict[str, dict[str, tuple[list[int], list[float]]]]  # key -> run label -> (steps, values)


def run_labels(run_dirs: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart (bench runs all end in ``seed_S``)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]


def default_keys(logged: Iterable[str]) -> list[str]:
    """The panels drawn when none are named, those of them that were logged: the NTP loss, each
    auxiliary head's loss (``foresight/loss0``, ``foresight/loss1``, ...) and the EMA's validation NLL."""
    logged = set(logged)
    heads = sorted((k for k in logged if HEAD_LOSS.match(k)),
                   key=lambda k: (HEAD_LOSS.match(k).group(1), int(HEAD_LOSS.match(k).group(2))))
    return [k for k in ("loss/ntp", *heads, "val/nll_ema") if k in logged]


def check_figure_path(out: str | Path) -> Path:
    """``out`` if a figure can be written there: a file (not a folder) whose suffix matplotlib knows,
    under no file. Raises ``ConfigError``; call it before any work."""
    from matplotlib.backend_bases import FigureCanvasBase

    known = (f".{kind}" for kind in FigureCanvasBase.get_supported_filetypes())
    suffixes = dict.fromkeys([".png", ".pdf", ".svg", *known])  # the usual ones first, in the message too
    return check_output_file(out, "out", suffixes=list(suffixes))


def smooth_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style exponential smoothing (``weight`` 0 = none), debiased at the start."""
    out, avg = [], 0.0
    for i, value in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight ** i) if weight else value)
    return out


def load_curves(run_dirs: Sequence[str | Path], keys: Sequence[str] | None = None) -> Curves:
    """key -> run label -> (steps, values), for every run that logged the key.

    ``keys`` default to ``default_keys`` of what the runs logged; a key no run logged is an error.
    """
    runs = {}
    for label, run_dir in zip(run_labels([Path(d) for d in run_dirs]), run_dirs):
        existing_dir(run_dir, "run directory")
        runs[label] = read_metrics(run_dir)
        if not runs[label]:
            raise DataError(f"{run_dir} has no metrics.jsonl records: is it a training run directory?")
    logged = {k for records in runs.values() for r in records for k in r} - {"step", "time"}
    keys = list(keys) if keys else default_keys(logged)
    if not keys:
        raise DataError(f"the runs logged none of loss/ntp, NAME/lossK, val/nll_ema; choose keys among "
                        f"{sorted(logged)}")
    for key in keys:
        if key not in logged:
            raise DataError(f"no run logged {key!r}; the logged keys are {sorted(logged)}")
    curves: Curves = {}
    for key in keys:
        curves[key] = {}
        for label, records in runs.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                curves[key][label] = ([s for s, _ in points], [v for _, v in points])
    return curves


def plot_curves(run_dirs: Sequence[str | Path], out: str | Path, keys: Sequence[str] | None = None,
                smooth: float = 0.0, log_y: bool = False) -> Curves:
    """One panel per key (default: ``default_keys``) with one line per run, against step, into ``out``
    (format from the suffix); returns the raw curves."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if not 0.0 <= smooth < 1.0:
        raise DataError(f"smooth must lie in [0, 1), got {smooth}")
    check_figure_path(out)
    curves = load_curves(run_dirs, keys)
    labels = run_labels([Path(d) for d in run_dirs])
    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    colours = {label: palette(i % palette.N) for i, label in enumerate(labels)}  # a run keeps its colour
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows + 0.3 * math.ceil(len(labels) / 4)), layout="constrained")
    lines = {}
    for i, (key, runs) in enumerate(curves.items(), start=1):
        ax = fig.add_subplot(rows, cols, i)
        for label, (steps, values) in runs.items():
            lines[label], = ax.plot(steps, smooth_ema(values, smooth), color=colours[label],
                                    marker="o" if len(steps) <= 30 else None, markersize=3)  # sparse: val NLL
        ax.set_title(key + (f" (smoothed {smooth})" if smooth else ""), fontsize="medium")
        ax.set_xlabel("training step")
        if log_y:
            ax.set_yscale("log")
    shown = [label for label in labels if label in lines]
    fig.legend([lines[label] for label in shown], shown, loc="outside lower center", ncols=min(4, len(shown)),
               fontsize="small")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return curves
