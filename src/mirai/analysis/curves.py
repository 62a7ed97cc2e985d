"""Training curves of several runs from their ``metrics.jsonl``: one panel per metric, one colour per
variant (group of runs), its seeds drawn as a band around their mean."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Iterable, Sequence

from mirai.data.options import existing_dir
from mirai.errors import DataError
from mirai.figures import check_figure_path, save_figure
from mirai.training.metrics import read_metrics

HEAD_LOSS = re.compile(r"^(\w+)/loss(\d+)$")  # one auxiliary head's loss: foresight/loss0, foresight/loss1, ...
SEED_TAIL = re.compile(r"/?seed_\d+$")  # the bench's run folders: VARIANT/seed_S
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


def quantity_label(key: str) -> str:
    """The y-axis label of a logged key, with its unit: losses and NLLs are in nats per token, and a
    foresight head's loss is the negative cosine similarity of its projections to their targets."""
    head = HEAD_LOSS.match(key)
    if head:
        return f"{head.group(1)} head {head.group(2)} loss (−cosine similarity)"
    return {"loss/ntp": "next-token loss (nats/token)", "loss/total": "total loss (nats/token + λ·foresight)",
            "val/nll_ema": "validation NLL, EMA weights (nats/token)", "val/nll": "validation NLL (nats/token)",
            "lr": "learning rate", "images_per_s": "throughput (images/s)"}.get(key, key)


def default_groups(labels: Sequence[str]) -> list[str]:
    """Each run's group: its label without a trailing ``seed_N`` part, so a bench's seeds of one variant
    (``baseline/seed_0``, ``baseline/seed_1``) draw as one band."""
    return [SEED_TAIL.sub("", label) or label for label in labels]


def band(runs: Sequence[tuple[list[int], list[float]]]) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, spread) over runs at every step any of them logged; the spread is the standard
    deviation over the runs that logged the step (0 where only one did)."""
    by_step: dict[int, list[float]] = {}
    for steps, values in runs:
        for step, value in zip(steps, values):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    spreads = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, spreads


def plot_curves(run_dirs: Sequence[str | Path], out: str | Path, keys: Sequence[str] | None = None,
                smooth: float = 0.0, log_y: bool = False, groups: Sequence[str] | None = None) -> Curves:
    """One panel per key (default: ``default_keys``) against training step, one colour per group of runs
    (``groups``, one name per run; default ``default_groups``: a bench's variants): the mean over the group's
    runs (seeds) as a line, mean ± standard deviation shaded. Written to ``out`` (format from the suffix)
    and a PDF beside it; returns the raw curves. ``DataError`` for a bad ``smooth`` or mismatched ``groups``."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not 0.0 <= smooth < 1.0:
        raise DataError(f"smooth must lie in [0, 1), got {smooth}")
    check_figure_path(out)
    repeated = sorted({str(d) for d in run_dirs if sum(Path(e).resolve() == Path(d).resolve() for e in run_dirs) > 1})
    if repeated:
        raise DataError(f"run {', '.join(repeated)} is given more than once: give each run once")
    labels = run_labels([Path(d) for d in run_dirs])
    groups = list(groups) if groups is not None else default_groups(labels)
    if len(groups) != len(labels):
        raise DataError(f"give one group per run: {len(groups)} groups for {len(labels)} runs")
    curves = load_curves(run_dirs, keys)
    group_of = dict(zip(labels, groups))
    names = list(dict.fromkeys(groups))
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = {name: palette(i % palette.N) for i, name in enumerate(names)}  # a group keeps its colour
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows + 0.35 * math.ceil(len(names) / 4) + 0.3), layout="constrained")
    seeds = {name: groups.count(name) for name in names}
    for i, (key, runs) in enumerate(curves.items(), start=1):
        ax = fig.add_subplot(rows, cols, i)
        for name in names:
            members = [(steps, smooth_ema(values, smooth)) for label, (steps, values) in runs.items()
                       if group_of[label] == name]
            if not members:
                continue
            steps, means, spreads = band(members)
            sparse = len(steps) <= 30  # validation NLL: a few points, so mark them
            ax.plot(steps, means, color=colours[name], marker="o" if sparse else None, markersize=3, linewidth=1.2)
            if any(spreads):
                ax.fill_between(steps, [m - s for m, s in zip(means, spreads)],
                                [m + s for m, s in zip(means, spreads)], color=colours[name], alpha=0.2, linewidth=0)
        ax.set_title(key + (f" (smoothed {smooth})" if smooth else ""), fontsize="medium")
        ax.set_xlabel("training step")
        ax.set_ylabel(quantity_label(key), fontsize="small")
        ax.grid(alpha=0.3)
        if log_y:
            ax.set_yscale("log")
    handles = [Patch(color=colours[name], label=f"{name} ({seeds[name]} run{'s' if seeds[name] > 1 else ''})")
               for name in names]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(names)), fontsize="small",
               title="line: mean over runs; band: ± standard deviation" if max(seeds.values()) > 1 else None,
               title_fontsize="small")
    save_figure(fig, out)
    return curves
