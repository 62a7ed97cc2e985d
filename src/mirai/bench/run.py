"""Running a bench: train every run of a share, score its missing checkpoints, then draw and report."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from mirai.bench.config import BenchConfig, Run, first_seed_runs, plan_runs, select_share
from mirai.bench.report import write_report
from mirai.bench.scorer import Scorer
from mirai.bench.store import (
    check_out_dir, check_same_scoring, check_same_training, read_floors, read_results, save_bench_config, store_record,
    write_json,
)
from mirai.data.codes import CodeStore
from mirai.errors import CheckpointError, ConfigError, Interrupted, MiraiError
from mirai.figures import figure_paths
from mirai.training.metrics import read_metrics
from mirai.training.trainer import TrainResult, train


def ensure_trained(run: Run) -> TrainResult:
    """Train ``run`` to its last step: from scratch, resumed from its latest checkpoint, or not at all
    when that checkpoint is the last (``train(resume="auto")``). Errors name the variant and seed."""
    try:
        return train(run.cfg, resume="auto")
    except MiraiError as err:
        raise type(err)(f"variant {run.variant!r}, seed {run.seed}: {err}") from err
    except Interrupted as err:  # a bench resumes its runs by itself: the trainer's --resume is not its way back
        raise Interrupted(err.signum, f"variant {run.variant!r}, seed {run.seed}: {err.message}",
                          hint="run the same bench command again to continue") from None


def val_nll(run_dir: Path, step: int) -> float | None:
    """The EMA's validation NLL the trainer logged at ``step`` (None without a validation store)."""
    values = [r["val/nll_ema"] for r in read_metrics(run_dir) if r["step"] == step and "val/nll_ema" in r]
    return values[-1] if values else None


@dataclass
class ScoredShare:
    """What ``train_and_score`` leaves for the caller: the share's runs, the floors (``OUT/reference.json``)
    and the share's scorer, built on first use (loading the evaluator and the references costs time)."""

    runs: list[Run]
    floors: dict
    scorer: Callable[[], Scorer]


def plan_share(bench: BenchConfig, variants: list[str] | None = None, seeds: list[int] | None = None) -> list[Run]:
    """The share's runs, checked against the records and runs already in ``OUT`` (``ConfigError`` before any
    work); what ``train_and_score`` will train and score, and what ``--dry-run`` prints."""
    check_out_dir(bench)
    check_same_scoring(bench, Path(bench.out_dir))
    runs = [check_same_training(run, bench.schedule()) for run in select_share(plan_runs(bench), variants, seeds)]
    # Scoring samples every run with the bench's sampling: its top-k must fit the run's vocabulary, its
    # guidance the run's null class and decoding passes, checked now rather than after hours of training (a
    # store not there yet, as under --dry-run before extraction, is named by training instead).
    # The run's own sample grids (its training config's sampling) are checked the same way.
    open_store = cache(CodeStore.open)  # the runs of a bench mostly share one store: open it once
    for run in runs:
        if Path(run.cfg.data.codes).exists():
            store = open_store(run.cfg.data.codes)
            try:
                args = run.cfg.model_args(store.vocab_size, store.grid_size, store.num_classes)
            except ConfigError as err:
                raise ConfigError(f"variant {run.variant!r}, model on {run.cfg.data.codes}: {err}") from None
            where = f"for variant {run.variant!r} ({run.cfg.data.codes}: {store.vocab_size} codes, " \
                    f"{store.grid_size}x{store.grid_size} grid)"
            if bench.tsne_layer is not None and bench.tsne_layer > args.n_layer:  # else found after all the work
                raise ConfigError(f"tsne_layer={bench.tsne_layer} is outside the blocks 1..{args.n_layer} of the model "
                                  f"{where}: give a block in that range, or null for each variant's foresight layer")
            for settings, what in ((bench.sampling, "the bench's sampling (sampling.* of the bench config)"),
                                   (run.cfg.grid_settings(args), "the run's own sampling (its sample grids)")):
                try:
                    settings.check_for(args)
                except ConfigError as err:
                    raise ConfigError(f"{what}, {where}: {err}") from None
    return runs


def train_and_score(bench: BenchConfig, variants: list[str] | None = None,
                    seeds: list[int] | None = None) -> ScoredShare:
    """Train the share's runs and score every checkpoint of theirs not yet in ``OUT/results.json``.

    Every config, and the records and runs already on disk, are checked (``ConfigError``)
    before any work; the scorer checks the runs' code stores before any training."""
    out = Path(bench.out_dir)
    runs = plan_share(bench, variants, seeds)
    out.mkdir(parents=True, exist_ok=True)
    save_bench_config(bench, out)
    results = read_results(out)
    todo = []
    for run in runs:
        done = {r["step"] for r in results.get(run.variant, []) if r["seed"] == run.seed}
        missing = [s for s in bench.schedule() if s not in done]
        if missing:
            todo.append((run, missing))

    @cache
    def get_scorer() -> Scorer:
        scorer = Scorer(bench, out)
        for run in runs:
            scorer.check_store(run.cfg.data.codes)
        return scorer

    bar = tqdm(total=sum(len(m) for _, m in todo), desc="bench checkpoints", unit="ckpt", dynamic_ncols=True,
               disable=None)
    try:
        for run, missing in todo:
            get_scorer()  # check stores and tokenizers before spending time on training
            bar.set_postfix_str(f"{run.variant} seed {run.seed}")
            ensure_trained(run)
            for step in missing:
                path = run.checkpoint(step)
                if not path.is_dir():
                    raise CheckpointError(f"{path} is missing (pruned or deleted), so step {step} of "
                                          f"{run.variant} seed {run.seed} cannot be scored; delete "
                                          f"{run.run_dir} to retrain it")
                samples = out / "samples" / run.variant / f"seed_{run.seed}" / f"step_{step:07d}.npz"
                record = {"seed": run.seed, "step": step, **get_scorer().score_checkpoint(path, samples),
                          "val_nll": val_nll(run.run_dir, step), "num_samples": bench.num_samples}
                store_record(out, run.variant, record)
                bar.update(1)
    finally:
        bar.close()
    return ScoredShare(runs, current_floors(out, get_scorer), get_scorer)


def current_floors(out: Path, get_scorer: Callable[[], Scorer]) -> dict:
    """The floors in ``OUT/reference.json``, (re)computed with the scorer when missing or written before the
    noise floor was taken at the sample count (no ``num_images``: the report's header states the counts)."""
    floors = read_floors(out)
    if floors is None:
        write_json(out / "reference.json", get_scorer().floors())
        floors = read_floors(out)
    return floors


def run_convergence(bench: BenchConfig, variants: list[str] | None = None,
                    seeds: list[int] | None = None) -> dict[str, list[dict]]:
    """Train, score and report every (variant, seed, checkpoint) not yet in ``OUT/results.json``;
    returns its records (variant -> [{seed, step, fid, ...}]).

    ``variants``/``seeds`` restrict this process to a share of the work (None: all of it). A share
    trains and scores its runs and draws their sample grids, but writes no report (tables, plots,
    t-SNE maps), which needs every variant: run once more without a share when all have finished."""
    out = Path(bench.out_dir)
    share = train_and_score(bench, variants, seeds)
    for run in first_seed_runs(bench, share.runs):
        grid = out / f"grid_{run.variant}.png"
        if not all(path.is_file() for path in figure_paths(grid)) and run.final_checkpoint.exists():
            share.scorer().grid(run.final_checkpoint, grid, f"{run.variant} (seed {run.seed}, EMA weights)",
                                bench.steps)
    results = read_results(out)  # with the records other shares added meanwhile
    if variants is None and seeds is None:
        _say_gone(write_report(bench, share.runs, results, share.floors))
    return results


def report_stored(bench: BenchConfig, variants: list[str] | None = None, seeds: list[int] | None = None) -> int:
    """Write the report (``write_report``) from the records already in ``OUT``, for the chosen variants and
    seeds only (None: all); trains and scores nothing (floors that an older version wrote are recomputed,
    ``current_floors``). For comparing some variants of a bench whose other
    variants were never run. Returns how many chosen runs have their folder on disk (the ones the curves and
    t-SNE maps can show). ``ConfigError`` for a variant or seed the bench lacks, a chosen run with no stored
    score (naming how to get one), or scoring settings other than the stored scores' (``check_same_scoring``)."""
    out = Path(bench.out_dir)
    runs = select_share(plan_runs(bench), variants, seeds)  # a misspelt name first: it is the likelier fault
    results = read_results(out)
    if not any(results.values()):
        raise ConfigError(f"{out} holds no scores yet (no records in results.json): run the bench before asking for "
                          "its report")
    check_same_scoring(bench, out)  # the report's header states these settings: they must be the scores' own
    unscored = [f"{r.variant} seed {r.seed}" for r in runs
                if not any(record["seed"] == r.seed for record in results.get(r.variant, []))]
    if unscored:
        raise ConfigError(f"{out}/results.json has no scores for {', '.join(unscored)}: run the bench for them "
                          "first, or leave them out with --variant/--seed")
    steps = {(r.variant, r.seed): {rec["step"] for rec in results.get(r.variant, []) if rec["seed"] == r.seed}
             for r in runs}
    scored = sorted(set().union(*steps.values()))
    never = [step for step in bench.schedule() if step not in scored]
    if bench.steps in never:  # no eval_at can leave out the last step: the report compares runs there
        raise ConfigError(f"no chosen run was scored at the last step, {bench.steps}, yet: run the bench for them "
                          "first (it scores only what is missing), or leave them out with --variant/--seed")
    if never:  # an eval_at naming steps no chosen run was scored at would draw empty rows over a good report
        raise ConfigError(f"no chosen run was scored at step{'s' * (len(never) > 1)} {', '.join(map(str, never))}; "
                          f"the stored scores are at steps {scored}: give an eval_at of those")
    partly = [f"{variant} seed {seed} at step {', '.join(str(s) for s in bench.schedule() if s not in done)}"
              for (variant, seed), done in steps.items() if not set(bench.schedule()) <= done]
    if partly:  # a run that never saved those steps, or a share stopped while scoring: said, not hidden
        print(f"note: no scores for {'; '.join(partly)}: those rows average fewer seeds, and the steps table "
              "names them (a share stopped while scoring? run the bench again: it scores only what is missing)")
    chosen = {r.variant for r in runs}
    shown = replace(bench, variants={k: v for k, v in bench.variants.items() if k in chosen},
                    seeds=[s for s in bench.seeds if s in {r.seed for r in runs}])
    gone = write_report(shown, runs, results, current_floors(out, lambda: Scorer(bench, out)))
    _say_gone(gone)
    return len(runs) - len(gone)


def _say_gone(gone: list[Run]) -> None:
    if gone:
        folders = f"{len(gone)} run folder{'s are' if len(gone) > 1 else ' is'} gone"
        print(f"{folders} ({', '.join(f'{r.variant} seed {r.seed}' for r in gone)}): "
              "their stored scores are in the table and FID figure, not in curves.png or the t-SNE maps "
              "(an existing curves.png is kept as drawn: it is redrawn only when every run's folder is on disk)")
