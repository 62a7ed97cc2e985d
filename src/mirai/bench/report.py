"""The bench's report: the results table (plain and paired by seed, with the floors as rows), the
scores-vs-steps figure, t-SNE maps and training curves (every figure as PNG and PDF)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from mirai.analysis.curves import plot_curves
from mirai.analysis.tsne import tsne_maps
from mirai.bench.config import BenchConfig, Run, first_seed_runs
from mirai.data.options import resolve_device
from mirai.figures import figure_paths, save_figure

TSNE_IMAGE = 0  # the test image of tsne_maps.png
COLUMNS = (("fid", "FID↓"), ("fid_recon", "FID vs recon↓"), ("inception_score", "IS↑"), ("precision", "Pre↑"),
           ("recall", "Rec↑"), ("class_accuracy", "class acc↑"), ("val_nll", "val NLL↓"))
PAIRED = (("fid", "FID"), ("fid_recon", "FID vs recon"), ("class_accuracy", "class acc"), ("val_nll", "val NLL"))
_BETTER = {"fid": lambda d: d < 0, "fid_recon": lambda d: d < 0, "class_accuracy": lambda d: d > 0,
           "val_nll": lambda d: d < 0}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def _crossing_cell(crossing: Crossing | list[int] | None) -> str:
    if isinstance(crossing, list):
        return f"not scored at step {', '.join(map(str, crossing))}"
    return "not reached" if crossing is None else f"{'≤' if crossing.bound else ''}{crossing.step:.0f}"


def _cell(records: list[dict], key: str) -> str:
    return _mean_std([r[key] for r in records if r.get(key) is not None])


def summary_rows(bench: BenchConfig, results: dict[str, list[dict]]) -> list[tuple[str, list[dict]]]:
    """(row name, one record per seed) for every variant@step, then each variant's last-N average
    (left out when it would average a single checkpoint: it would repeat that checkpoint's row).

    The average row first averages each seed over its last ``average_last`` scored checkpoints
    (late FID is noisy from checkpoint to checkpoint), then spreads those over seeds.
    """
    rows = []
    last = bench.schedule()[-bench.average_last:]
    for name in bench.variants:
        records = [r for r in results.get(name, []) if r["seed"] in bench.seeds]
        for step in bench.schedule():
            rows.append((f"{name}@{step}", [r for r in records if r["step"] == step]))
        if len(last) < 2:
            continue
        averaged = []
        for seed in bench.seeds:
            mine = [r for r in records if r["seed"] == seed and r["step"] in last]
            if mine:
                averaged.append({k: statistics.mean(r[k] for r in mine) if all(r.get(k) is not None for r in mine)
                                 else None for k, _ in COLUMNS})
        rows.append((f"{name}@last{len(last)}", averaged))
    return rows


def format_table(bench: BenchConfig, results: dict[str, list[dict]], floors: dict,
                 title: str = "Convergence benchmark") -> str:
    """The results as markdown in the paper's layout (rows = model@step, metrics across), mean ± std over seeds,
    under the heading ``title``; ``floors`` is what ``Scorer.floors`` returned (``OUT/reference.json``)."""
    s = bench.sampling
    tok, noise = floors["tokenizer_floor"], floors["noise_floor"]
    lines = [
        f"# {title}", "",
        f"{len(bench.seeds)} seed(s) {bench.seeds}, {bench.steps} steps, {bench.num_samples} samples per checkpoint "
        f"({bench.class_sampling} labels, sample seed {bench.sample_seed}), cfg scale {s.cfg_scale}, "
        f"temperature {s.temperature}, top-k {s.top_k}, top-p {s.top_p}, EMA weights.",
        f"Fashion-MNIST evaluator features against {floors['num_images']} real test images "
        f"({floors['reference_codes']}); \"vs recon\" = against the tokenizer's reconstructions of them.",
        f"The last two rows are floors, scored like the samples: the noise floor is {noise['num_images']} real "
        f"test images against the other {noise['num_reference']} (what a perfect generator would get with "
        f"{noise['num_images']} samples{'; capped at half the test set' if noise.get('capped') else ''}), the "
        f"tokenizer floor {tok['num_images']} of the tokenizer's reconstructions against all real images "
        "(no GPT can do better).", "",
        "| run | " + " | ".join(label for _, label in COLUMNS) + " | seeds |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, records in summary_rows(bench, results):
        lines.append(f"| {name} | " + " | ".join(_cell(records, k) for k, _ in COLUMNS) + f" | {len(records)} |")
    for name, floor in ((f"noise floor ({noise['num_images']} real)", noise),
                        (f"tokenizer floor ({tok['num_images']} recon)", tok)):
        lines.append(f"| {name} | " + " | ".join(_cell([floor], k) for k, _ in COLUMNS) + " | – |")
    paired = paired_rows(bench, results)
    if paired:
        reference = bench.reference_variant()
        lines += ["", f"Paired by seed against {reference} (same initialisation, data order and sampling noise, so "
                  "seed-to-seed variation largely cancels): mean ± std of the per-seed differences, and in how "
                  "many seeds the variant was better.", "",
                  "| run | " + " | ".join(f"Δ {label}" for _, label in PAIRED) + " | ΔFID % |",
                  "|---|" + "---|" * (len(PAIRED) + 1)]
        for name, diffs, relative in paired:
            cells = [f"{_mean_std(diffs[k])} ({sum(map(_BETTER[k], diffs[k]))}/{len(diffs[k])})"
                     if diffs[k] else "–" for k, _ in PAIRED]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_std(relative)} |")
    lines += _crossing_table(bench, results)
    return "\n".join(lines) + "\n"


def paired_rows(
    bench: BenchConfig, results: dict[str, list[dict]]
) -> list[tuple[str, dict[str, list[float]], list[float]]]:
    """(variant@step, metric -> per-seed differences to the reference variant, per-seed relative FID change in %)
    for every other variant and scored step, over the seeds both have."""
    reference = bench.reference_variant()
    ref = {(r["seed"], r["step"]): r for r in results.get(reference, []) if r["seed"] in bench.seeds}
    rows = []
    for name in bench.variants:
        if name == reference:
            continue
        for step in bench.schedule():
            pairs = [(r, ref[(r["seed"], step)]) for r in results.get(name, [])
                     if r["step"] == step and (r["seed"], step) in ref]
            if not pairs:
                continue
            diffs = {k: [r[k] - b[k] for r, b in pairs if r.get(k) is not None and b.get(k) is not None]
                     for k, _ in PAIRED}
            relative = [100 * (r["fid"] / b["fid"] - 1) for r, b in pairs]
            rows.append((f"{name}@{step}", diffs, relative))
    return rows


@dataclass(frozen=True)
class Crossing:
    """Where a FID curve first reaches a target: ``step`` (interpolated), or an upper ``bound`` (the first scored
    checkpoint is already at or below the target)."""

    step: float
    bound: bool = False


def crossing_step(curve: list[tuple[int, float]], target: float) -> Crossing | None:
    """The step from which the FID ``curve`` ((step, FID) ascending by step) stays at or below ``target``,
    linearly interpolated between the two checkpoints that bracket it; None when it ends above it. A curve
    that dips below and comes back up (scoring noise) is counted from its last crossing, not its first."""
    if not curve or curve[-1][1] > target:
        return None
    above = [i for i, (_, fid) in enumerate(curve) if fid > target]
    if not above:
        return Crossing(curve[0][0], bound=True)
    (s0, f0), (s1, f1) = curve[above[-1]], curve[above[-1] + 1]
    return Crossing(s0 + (f0 - target) / (f0 - f1) * (s1 - s0))


def crossing_rows(
    bench: BenchConfig, results: dict[str, list[dict]]
) -> list[tuple[str, list[int], list[float], list[Crossing | list[int] | None]]]:
    """(variant, seeds, the reference's final FID per seed, per seed the step at which the variant's curve reaches
    it, or the scheduled steps it was not scored at) for every other variant, over the seeds where the reference
    has its final checkpoint: the "steps to the baseline's final FID" of benchmarks/RESULTS.md §4.12, each run on
    its own full schedule. No rows with a single scored step, where the answer could only be "at the end or
    never"."""
    if len(bench.schedule()) < 2:
        return []
    reference = bench.reference_variant()
    final = {r["seed"]: r["fid"] for r in results.get(reference, []) if r["step"] == bench.steps}
    schedule, rows = bench.schedule(), []
    for name in bench.variants:
        if name == reference:
            continue
        seeds, targets, steps = [], [], []
        for seed in bench.seeds:
            curve = {r["step"]: r["fid"] for r in results.get(name, []) if r["seed"] == seed}
            if seed in final and curve:
                unscored = [step for step in schedule if step not in curve]
                seeds.append(seed)
                targets.append(final[seed])
                steps.append(unscored or crossing_step([(step, curve[step]) for step in schedule], final[seed]))
        if steps:
            rows.append((name, seeds, targets, steps))
    return rows


def _crossing_table(bench: BenchConfig, results: dict[str, list[dict]]) -> list[str]:
    """The markdown lines of ``crossing_rows`` (none when no variant has all its checkpoints scored)."""
    crossings = crossing_rows(bench, results)
    if not crossings:
        return []
    reference = bench.reference_variant()
    lines = ["", f"Steps to {reference}'s final FID (each seed's, at step {bench.steps}), each run on its own "
             f"{bench.steps}-step schedule: from where the variant's FID stays at or below it, linearly interpolated "
             "between the two scored checkpoints that bracket it (a curve that flattens reaches it a little "
             "earlier); \"≤\" where every scored checkpoint is already below it. The fraction's mean ± std is "
             "over the seeds that reach it; a seed not scored at every step is named, not counted.", "",
             f"| run | {reference}'s final FID | step reached, per seed | fraction of {reference}'s steps | "
             "seeds that reach it |", "|---|---|---|---|---|"]
    for name, seeds, targets, steps in crossings:
        reached = [s for s in steps if isinstance(s, Crossing)]
        scored = [s for s in steps if not isinstance(s, list)]
        cells = ", ".join(f"seed {seed}: {_crossing_cell(s)}" for seed, s in zip(seeds, steps))
        fraction = ("≤ " if any(s.bound for s in reached) else "") + _mean_std([s.step / bench.steps for s in reached])
        lines.append(f"| {name} | {_mean_std(targets)} | {cells} | {fraction} | {len(reached)}/{len(scored)} |")
    return lines


FID_PANELS = (("fid", "FID vs real test images ↓"), ("fid_recon", "FID vs tokenizer reconstructions ↓"),
              ("class_accuracy", "class accuracy of samples ↑"))


def _mark_reference_final(ax, bench: BenchConfig, results: dict[str, list[dict]]) -> None:
    """The reference variant's final FID (mean over seeds) as a line across the FID panel, and half the
    schedule as an upright one; nothing with a single scored step or no final record."""
    final = [r["fid"] for r in results.get(bench.reference_variant(), [])
             if r["step"] == bench.steps and r["seed"] in bench.seeds]
    if len(bench.schedule()) < 2 or not final:
        return
    ax.axhline(statistics.mean(final), color="black", linestyle="-.", linewidth=1, alpha=0.6,
               label=f"{bench.reference_variant()}'s final FID")
    ax.axvline(bench.steps / 2, color="black", linestyle="--", linewidth=1, alpha=0.4, label="half the steps")


def plot_fid(bench: BenchConfig, results: dict[str, list[dict]], floors: dict, path: Path) -> list[Path]:
    """The scores against training steps, one panel per quantity (``FID_PANELS``), one colour per
    variant: the mean over seeds with markers at the scored checkpoints, mean ± standard deviation
    over seeds shaded; the noise and tokenizer floors as dashed lines where they apply; on the FID panel the
    reference variant's final FID and half the schedule (``_mark_reference_final``). Written to
    ``path`` and a PDF beside it; returns the paths."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * len(FID_PANELS), 3.9), layout="constrained")
    palette = colormaps["tab10" if len(bench.variants) <= 10 else "tab20"]
    noise, tok = floors["noise_floor"], floors["tokenizer_floor"]
    for i, (key, label) in enumerate(FID_PANELS, start=1):
        ax = fig.add_subplot(1, len(FID_PANELS), i)
        for c, name in enumerate(bench.variants):
            steps, means, spreads = [], [], []
            for step in bench.schedule():
                values = [r[key] for r in results.get(name, [])
                          if r["step"] == step and r["seed"] in bench.seeds and r.get(key) is not None]
                if values:
                    steps.append(step)
                    means.append(statistics.mean(values))
                    spreads.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            if not steps:
                continue
            colour = palette(c % palette.N)
            ax.plot(steps, means, marker="o", markersize=4, color=colour, label=name)
            if any(spreads):
                ax.fill_between(steps, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)],
                                color=colour, alpha=0.2, linewidth=0)
        if key == "fid":  # "half the steps" read off the figure: where each curve meets the reference's final FID
            _mark_reference_final(ax, bench, results)
        if key != "fid_recon":  # both floors are measured against the real images
            ax.axhline(noise[key], color="black", linestyle=":", linewidth=1,
                       label=f"noise floor ({noise['num_images']} real images)")
            ax.axhline(tok[key], color="grey", linestyle="--", linewidth=1, label="tokenizer floor")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(5, len(labels)), fontsize="small")
    seeds = f"mean over {len(bench.seeds)} seeds, ± standard deviation shaded" if len(bench.seeds) > 1 else "one seed"
    fig.suptitle(f"{bench.num_samples} samples per checkpoint, Fashion-MNIST evaluator; {seeds}", fontsize="medium")
    return save_figure(fig, path)


def write_report(bench: BenchConfig, runs: list[Run], results: dict[str, list[dict]], floors: dict) -> list[Run]:
    """Write ``OUT/results.md``, ``fid_vs_steps.png``, ``curves.png`` (each figure with a PDF beside it) and
    (once) ``tsne_maps.png``/``.pdf``/``.json`` for ``runs``, which must be every run of the bench: the
    report compares all variants.

    The table and the FID figure need only the stored records. Training curves and t-SNE maps need the
    run folders, so runs whose folder is gone (records merged from another machine or an older bench)
    are left out of those two figures, and a ``curves.png`` already drawn is then kept as it is; the runs
    left out are returned, so the caller can say so."""
    out = Path(bench.out_dir)
    kept = [run for run in runs if (run.run_dir / "metrics.jsonl").is_file()]
    maps = out / "tsne_maps.png"
    first_seed = [run for run in first_seed_runs(bench, kept) if run.final_checkpoint.exists()]
    stored = maps.with_suffix(".json")
    drawn = set(json.loads(stored.read_text())["maps"]) if stored.is_file() else set()
    # Drawn once, and again when a run on disk is missing from them (an earlier report of fewer variants).
    if first_seed and not (all(p.is_file() for p in figure_paths(maps)) and {r.variant for r in first_seed} <= drawn):
        layers = [bench.tsne_layer if bench.tsne_layer is not None else run.cfg.foresight.layer for run in first_seed]
        tsne_maps([run.final_checkpoint for run in first_seed], bench.reference_codes, maps, layers=layers,
                  image_indices=[TSNE_IMAGE], labels=[run.variant for run in first_seed],
                  device=resolve_device(bench.device))
    (out / "results.md").write_text(format_table(bench, results, floors))
    plot_fid(bench, results, floors, out / "fid_vs_steps.png")
    gone = [run for run in runs if run not in kept]
    curves = out / "curves.png"
    # A figure drawn while every run was on disk is not replaced by one that lacks some.
    if kept and not (gone and curves.is_file()):
        plot_curves([run.run_dir for run in kept], curves, groups=[run.variant for run in kept])
    return gone
