"""``mirai bench convergence``: train every variant from the same seeds and budget, score its checkpoints.

Example::

    mirai bench convergence --config configs/bench/fashion_convergence.yaml
    mirai bench convergence --config configs/bench/fashion_convergence.yaml seeds=[0] out_dir=runs/bench/quick
    # score another bench's trained runs again, differently (here: more samples), without training
    mirai bench convergence --config configs/bench/fashion_convergence.yaml num_samples=10000 \
        out_dir=runs/bench/s10k runs_dir=runs/bench/fashion_convergence/runs

Rerunning the same command continues where it stopped; finished checkpoints are not scored again.
To use several cores or GPUs, start one process per share of the work, then one plain run for the report::

    OMP_NUM_THREADS=1 mirai bench convergence --config B.yaml --variant baseline &
    OMP_NUM_THREADS=1 mirai bench convergence --config B.yaml --variant mirai_i &
    wait; mirai bench convergence --config B.yaml

``--report`` writes the tables and figures from the stored scores alone, for the ``--variant``/``--seed``
given: e.g. to compare the variants that ran while another one of the config never did.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: FID-vs-steps convergence of training variants")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "convergence",
        help="train variants x seeds, score each checkpoint (FID, IS, precision, recall, class accuracy)",
        description="Trains every (variant, seed) of a bench config for the same steps, scores the EMA weights "
        "at each eval_at checkpoint with the Fashion-MNIST evaluator against the real test images and against "
        "the tokenizer's reconstructions, and writes OUT/results.json, results.md, fid_vs_steps.png, "
        "grid_VARIANT.png, tsne_maps.png (+ .json) and curves.png, every figure also as PDF. Resumable: rerun the same command after an "
        "interruption; a rerun only adds what is missing.",
    )
    p.add_argument("--config", required=True, help="bench YAML (see mirai.bench.config.BenchConfig)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the bench config, e.g. seeds=[0]")
    p.add_argument("--variant", action="append", metavar="NAME",
                   help="train and score only this variant (repeatable): one share of the work, for parallel "
                   "processes on the same out_dir; a share writes no report, so run once more without "
                   "--variant/--seed when all shares have finished")
    p.add_argument("--seed", action="append", type=int, metavar="S",
                   help="train and score only this training seed (repeatable); see --variant")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="check the config and every variant's training config, print the plan, do nothing")
    mode.add_argument("--report", action="store_true",
                      help="only write the report (tables, figures) from the scores already stored, for the "
                      "--variant/--seed given (default: all); trains and scores nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirai.bench.config import load_bench
    from mirai.bench.run import plan_share, report_stored, run_convergence

    bench = load_bench(args.config, args.overrides)
    if args.dry_run:
        runs = plan_share(bench, args.variant, args.seed)  # the checks a real run makes, so a bad plan fails now
        print(f"{plural(len(runs), 'run')} x {plural(len(bench.schedule()), 'checkpoint')} {bench.schedule()} "
              f"-> {bench.out_dir}; each run saves and validates every {plural(bench.save_every(), 'step')}")
        stores = {r.cfg.data.codes for r in runs} | {r.cfg.data.val_codes for r in runs} | {bench.reference_codes}
        for store in sorted(str(s) for s in stores if s and not Path(s).exists()):
            print(f"  warning: code store {store} does not exist yet; make it with mirai extract before the run")
        name_width = max(len(r.variant) for r in runs)
        model_width = max(len(r.cfg.model.name) for r in runs)
        for r in runs:
            print(f"  {r.variant:<{name_width}}  seed {r.seed}  {r.cfg.model.name:<{model_width}}  {r.run_dir}")
            gpt = r.cfg.model.args()
            print(f"  {'':<{name_width}}  foresight {r.cfg.foresight.describe(gpt.n_layer, gpt.dim)}")
            for warning in r.cfg.foresight.warnings():  # what each run's banner will say, before hours of work
                print(f"  {'':<{name_width}}  warning: {warning}")
        return 0
    if args.report:
        on_disk = report_stored(bench, variants=args.variant, seeds=args.seed)
        figures = (f"the t-SNE maps and curves of the {on_disk} run(s) on disk where they were missing or out of date"
                   if on_disk else "no t-SNE maps or curves (no run folder on disk; any already drawn are kept)")
        print(f"wrote {bench.out_dir}/results.md and fid_vs_steps from the stored scores, and {figures} "
              "(each figure .png and .pdf)")
        return 0
    run_convergence(bench, variants=args.variant, seeds=args.seed)
    if args.variant or args.seed:
        print(f"this share's records are in {bench.out_dir}/results.json; when every share has finished, run the "
              "command once more without --variant/--seed to write the report")
        return 0
    print(f"wrote {bench.out_dir}/results.json, results.md and fid_vs_steps, and the sample grids, t-SNE maps and "
          "curves of the runs on disk (each .png and .pdf)")
    return 0


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"
