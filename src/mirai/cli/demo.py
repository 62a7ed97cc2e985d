"""``mirai demo``: the whole pipeline on Fashion-MNIST on a CPU (what ``make demo`` runs)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="tokenize Fashion-MNIST, train baseline and Mirai-I, sample and score them (CPU, ~10 min)",
        description="Runs every stage into --out, skipping what already exists (rerun to finish an "
        "interrupted demo). Variants are the configs in configs/fashion/ (baseline, mirai_i, mirai_e and "
        "their PAR forms par_baseline, par_mirai_i, par_mirai_e).",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--variants", default="baseline,mirai_i",
                   help="comma-separated configs/fashion names (default baseline,mirai_i)")
    p.add_argument("--steps", type=int, default=400, help="training steps per variant (default 400)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples scored per variant (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--per-class", type=int, default=3000,
                   help="train on the first K images of each class (default 3000; 0 = all 60 000)")
    p.add_argument("overrides", nargs="*", help="training-config overrides for every variant, e.g. optim.lr=5e-4")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mirai.bench.demo import DemoSettings, run_demo

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    per_class = None if args.per_class == 0 else args.per_class  # 0: all images
    run_demo(DemoSettings(Path(args.out), variants, args.steps, args.num_samples, args.seed, args.device,
                          per_class, tuple(args.overrides)))
    return 0
