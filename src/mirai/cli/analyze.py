"""``mirai analyze``: training curves of several runs, and t-SNE maps of a GPT block's representations.

Examples::

    mirai analyze curves runs/fashion/baseline runs/fashion/mirai_i --key val/nll_ema --out curves.png
    mirai analyze tsne runs/fashion/mirai_i/checkpoints/best --codes runs/codes/fashion-vq8-test \\
        --layer 3 --encoder fashion8 --out tsne.png
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="training curves and t-SNE maps of learned representations")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("curves", help="plot one metrics.jsonl series of several runs",
                           description="One line per run of KEY against step, from each RUN_DIR/metrics.jsonl.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--key", default="val/nll_ema", help="metric to plot (default val/nll_ema)")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf, .svg)")
    p.add_argument("--smooth", type=float, default=0.0, help="exponential smoothing weight in [0, 1) (default 0)")
    p.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    p.set_defaults(func=curves)

    p = actions.add_parser(
        "tsne", help="t-SNE of per-image pooled GPT hidden states, coloured by class, with k-NN accuracy",
        description="Mean-pools the hidden states after block --layer over each image's token positions, embeds "
        "the images with t-SNE and colours them by class; --encoder adds the same map for a foresight encoder's "
        "features. Writes OUT and OUT with suffix .json (k-NN class accuracy of the features and of the map).",
    )
    p.add_argument("checkpoint", help="GPT checkpoint directory (e.g. RUN/checkpoints/best)")
    p.add_argument("--codes", required=True, help="code store whose images are embedded (e.g. the test split)")
    p.add_argument("--layer", type=int, required=True, help="1-based GPT block")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf, .svg)")
    p.add_argument("--encoder", help="also map this foresight encoder's features (e.g. fashion8)")
    p.add_argument("--num-images", type=int, default=2000, help="class-balanced subset size (default 2000)")
    p.add_argument("--condition", choices=["null", "label"], default="null",
                   help="class input of the GPT: null (default; the label would separate the classes by itself) "
                        "or each image's label")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--k", type=int, default=10, help="neighbours of the k-NN accuracy (default 10)")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=tsne)


def curves(args: argparse.Namespace) -> int:
    from mirai.analysis.curves import plot_curves

    plotted = plot_curves(args.run_dirs, args.key, args.out, smooth=args.smooth, log_y=args.log_y)
    for label, (steps, values) in plotted.items():
        print(f"{label}: {len(steps)} points, last {args.key} = {values[-1]:.4g} at step {steps[-1]}")
    print(f"wrote {args.out}")
    return 0


def tsne(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mirai.analysis.tsne import tsne_report

    report = tsne_report(args.checkpoint, args.codes, args.layer, args.out, encoder=args.encoder,
                         num_images=args.num_images, condition=args.condition, use_ema=not args.raw_weights,
                         k=args.k, perplexity=args.perplexity, seed=args.seed, device=args.device)
    for title, s in report["maps"].items():
        print(f"{title}: {s['k']}-NN class accuracy {s['knn_features']:.4f} (features), {s['knn_map']:.4f} (t-SNE map)")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0
