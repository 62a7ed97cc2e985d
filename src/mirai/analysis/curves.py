"""Training curves: one metric from several runs' ``metrics.jsonl``, one line per run, on one plot."""

from __future__ import annotations

from pathlib import Path

from mirai.errors import DataError
from mirai.training.metrics import read_metrics


def run_labels(run_dirs: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart (bench runs all end in ``seed_S``)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]


def smooth_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style exponential smoothing (``weight`` 0 = none), debiased at the start."""
    out, avg = [], 0.0
    for i, value in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight ** i) if weight else value)
    return out


def load_curves(run_dirs: list[str | Path], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """label -> (steps, values) of ``key`` for every run that logged it; an error if none did."""
    curves, seen = {}, set()
    for label, run_dir in zip(run_labels([Path(d) for d in run_dirs]), run_dirs):
        records = read_metrics(run_dir)
        if not records:
            raise DataError(f"{run_dir} has no metrics.jsonl records: is it a training run directory?")
        seen.update(k for r in records for k in r)
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            curves[label] = ([s for s, _ in points], [v for _, v in points])
    if not curves:
        keys = sorted(seen - {"step", "time"})
        raise DataError(f"no run logged {key!r}; the logged keys are {keys}")
    return curves


def plot_curves(run_dirs: list[str | Path], key: str, out: str | Path, smooth: float = 0.0,
                log_y: bool = False) -> dict[str, tuple[list[int], list[float]]]:
    """Plot ``key`` against step for each run into ``out`` (format from the suffix); returns the raw curves."""
    from matplotlib.figure import Figure

    if not 0.0 <= smooth < 1.0:
        raise DataError(f"smooth must lie in [0, 1), got {smooth}")
    curves = load_curves(run_dirs, key)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, (steps, values) in curves.items():
        ax.plot(steps, smooth_ema(values, smooth), label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(key + (f" (smoothed {smooth})" if smooth else ""))
    if log_y:
        ax.set_yscale("log")
    ax.legend(fontsize="small")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return curves
