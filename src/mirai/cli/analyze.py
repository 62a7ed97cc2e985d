"""``mirai analyze``: training curves of several runs, token maps of a GPT block (Fig. 9) and class maps.

Examples::

    mirai analyze curves runs/fashion/baseline runs/fashion/mirai_i --out curves.png
    mirai analyze tsne --gpt runs/fashion/baseline/checkpoints/best \\
        --gpt runs/fashion/mirai_i/checkpoints/best --labels baseline mirai_i \\
        --codes runs/codes/fashion-vq8-test --layer 2 --image-index 0 7 --out maps.png
    mirai analyze classmap --gpt runs/fashion/mirai_i/checkpoints/best --codes runs/codes/fashion-vq8-test \\
        --layer 3 --encoder fashion8 --out classmap.png
    mirai analyze foresight --gpt runs/fashion/mirai_e/checkpoints/step_0001000 \\
        --codes runs/codes/fashion-vq8-test --out probe.json
"""

from __future__ import annotations

import argparse


FIGURE_OUT = "figure file (.png, .pdf, .svg; a PDF copy is written beside any other kind); replaced if it exists"


def add_parser(subparsers) -> None:
    from mirai.cli.flags import add_flag

    parser = subparsers.add_parser("analyze", help="training curves, token maps and class maps of representations")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser(
        "curves", help="plot metrics.jsonl series of several runs, one panel per metric",
        description="One panel per metric, one line per run against step, from each RUN_DIR/metrics.jsonl. "
        "By default: loss/ntp, every auxiliary head's loss (foresight/loss0, foresight/loss1, ...) and "
        "val/nll_ema, those that were logged.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--key", action="append", dest="keys", metavar="KEY",
                   help="metric to plot instead of the defaults; repeat for several panels")
    p.add_argument("--out", required=True, help=FIGURE_OUT)
    p.add_argument("--smooth", type=float, default=0.0, help="exponential smoothing weight in [0, 1) (default 0)")
    p.add_argument("--log-y", action="store_true", help="logarithmic y axes")
    p.set_defaults(func=curves)

    p = actions.add_parser(
        "tsne", help="t-SNE map of one image's token states per checkpoint (paper Fig. 9), with a smoothness score",
        description="For each image, embeds the states after GPT block --layer of its g*g grid cells with t-SNE, "
        "colours each cell by its 2-D position through a fixed 2-D colour map, and draws one panel per "
        "checkpoint beside the image. Smoothness = mean distance between neighbouring cells / mean distance "
        "between any two cells (lower = smoother, about 1 = no spatial structure). Writes OUT and OUT with "
        "suffix .json.",
    )
    add_flag(p, "--gpt", ("--checkpoint",), action="append", dest="checkpoints", metavar="GPT",
             help="GPT checkpoint directory (e.g. RUN/checkpoints/best); repeat to compare runs (required)")
    p.add_argument("--codes", required=True, help="code store holding the images (e.g. the test split)")
    p.add_argument("--layer", type=int, help="1-based GPT block (default: the foresight default, 2/3 of the depth)")
    p.add_argument("--out", required=True, help=FIGURE_OUT)
    p.add_argument("--image-index", type=int, nargs="+", default=[0], dest="image_indices", metavar="I",
                   help="images of the store to map, one row each (default 0)")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="one panel title per checkpoint "
                   "(default: the shortest distinct tails of the checkpoint paths)")
    p.add_argument("--condition", choices=["label", "null"], default="label",
                   help="class input of the GPT: the image's label (default) or the null class")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity, at most a third of the "
                   "cells (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=tsne)

    p = actions.add_parser(
        "classmap", help="t-SNE of per-image pooled GPT states, coloured by class, with k-NN accuracy",
        description="Mean-pools the states after block --layer over each image's grid cells, embeds the images "
        "with t-SNE and colours them by class; --encoder adds the same map for a foresight encoder's features. "
        "Writes OUT and OUT with suffix .json (k-NN class accuracy of the features and of the map).",
    )
    add_flag(p, "--gpt", dest="gpt", help="GPT checkpoint directory (e.g. RUN/checkpoints/best)")
    # The positional form (`mirai analyze classmap CKPT`) is the older spelling, still accepted.
    p.add_argument("checkpoint", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--codes", required=True, help="code store whose images are embedded (e.g. the test split)")
    p.add_argument("--layer", type=int, required=True, help="1-based GPT block")
    p.add_argument("--out", required=True, help=FIGURE_OUT)
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
    p.set_defaults(func=classmap)

    p = actions.add_parser(
        "foresight", help="what a foresight run's targets add to next-token prediction: probes and gradients",
        description="For a Mirai-I or Mirai-E training checkpoint: linear probes of the next token from the "
        "student's aligned state, from each head's target and from both; the ridge R^2 of each target from the "
        "state with and without the next token; and, per batch, the weighted foresight gradient's norm over "
        "the NTP gradient's and their cosine on the GPT weights both reach (skipped inside the NTP-only warm-up, "
        "where no foresight gradient is applied). Writes OUT (JSON).",
    )
    p.add_argument("--gpt", required=True,
                   help="training checkpoint of a foresight run (RUN/checkpoints/step_NNNNNNN or .../best)")
    p.add_argument("--codes", required=True, help="code store of held-out images (e.g. the test split)")
    p.add_argument("--out", required=True, help="report file (.json)")
    p.add_argument("--num-images", type=int, default=400, help="images probed, view 0 each (default 400)")
    p.add_argument("--batch-size", type=int, default=64, help="images per gradient batch (default 64, the "
                   "Fashion-MNIST training batch)")
    p.add_argument("--max-rows", type=int, default=20000, help="rows per probe, a random subset (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row subset and the probes (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=foresight)


def curves(args: argparse.Namespace) -> int:
    from mirai.analysis.curves import plot_curves
    from mirai.figures import figure_paths

    plotted = plot_curves(args.run_dirs, args.out, keys=args.keys, smooth=args.smooth, log_y=args.log_y)
    for key, runs in plotted.items():
        for label, (steps, values) in runs.items():
            print(f"{label}: {len(steps)} points, last {key} = {values[-1]:.4g} at step {steps[-1]}")
    print(f"wrote {' and '.join(map(str, figure_paths(args.out)))}")
    return 0


def tsne(args: argparse.Namespace) -> int:
    from pathlib import Path
    from statistics import mean

    from mirai.analysis.tsne import tsne_maps
    from mirai.errors import ConfigError
    from mirai.figures import figure_paths

    if not args.checkpoints:
        raise ConfigError("no GPT checkpoint given: pass --gpt CHECKPOINT (repeat it to compare runs)")
    report = tsne_maps(args.checkpoints, args.codes, args.out, layers=[args.layer] * len(args.checkpoints),
                       image_indices=args.image_indices, labels=args.labels, condition=args.condition,
                       use_ema=not args.raw_weights, perplexity=args.perplexity, seed=args.seed, device=args.device)
    for label, s in report["maps"].items():
        print(f"{label} (block {s['layer']}): smoothness {mean(s['smoothness']):.4f} (map), "
              f"{mean(s['smoothness_states']):.4f} (states), mean over {len(s['smoothness'])} image(s)")
    print(f"wrote {', '.join(map(str, figure_paths(args.out)))} and {Path(args.out).with_suffix('.json')}")
    return 0


def classmap(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mirai.analysis.classmap import classmap_report
    from mirai.errors import ConfigError
    from mirai.figures import figure_paths

    if (args.gpt is None) == (args.checkpoint is None):
        raise ConfigError("give the GPT checkpoint once: --gpt CHECKPOINT (the older positional form also works)")
    report = classmap_report(args.gpt or args.checkpoint, args.codes, args.layer, args.out, encoder=args.encoder,
                             num_images=args.num_images, condition=args.condition, use_ema=not args.raw_weights,
                             k=args.k, perplexity=args.perplexity, seed=args.seed, device=args.device)
    for title, s in report["maps"].items():
        print(f"{title}: {s['k']}-NN class accuracy {s['knn_features']:.4f} (features), {s['knn_map']:.4f} (t-SNE map)")
    print(f"wrote {', '.join(map(str, figure_paths(args.out)))} and {Path(args.out).with_suffix('.json')}")
    return 0


def foresight(args: argparse.Namespace) -> int:
    from mirai.analysis.foresight_probe import foresight_probe

    r = foresight_probe(args.gpt, args.codes, args.out, num_images=args.num_images, batch_size=args.batch_size,
                        max_rows=args.max_rows, seed=args.seed, device=args.device)
    g = r["gradient"]
    fewer = f" (all the store holds; --num-images asked for {args.num_images})" if r["images"] < args.num_images else ""
    print(f"{r['source']} targets, block {r['layer']}, step {r['step']}, {r['images']} images{fewer}")
    if r["in_warmup"]:
        print(f"step {r['step']} is inside the NTP-only warm-up: no foresight gradient was applied yet and the "
              "heads are untrained (the probes of the states and targets below still hold)")
    elif g is None:
        print("gradient: every lambda is 0 at this step, so there is no foresight gradient to compare")
    else:
        print(f"gradient: ||lambda g_F|| / ||g_NTP|| = {g['norm_ratio_mean']:.3f} +- {g['norm_ratio_std']:.3f}, "
              f"cosine {g['cosine_mean']:.3f} +- {g['cosine_std']:.3f} ({g['batches']} batches)")
    print("head            next-token acc: model  state  target  both   R2(target|state)  +next token  share")
    for h in r["heads"]:
        print(f"{h['head']:<16}{h['model_next_token_acc']:>21.3f}{h['probe_next_token_from_student']:>7.3f}"
              f"{h['probe_next_token_from_target']:>8.3f}{h['probe_next_token_from_both']:>7.3f}"
              f"{h['r2_target_from_student']:>19.3f}{h['r2_target_from_student_and_next_token']:>13.3f}"
              + (f"{h['novel_next_token_share']:>7.3f}" if h["novel_next_token_share"] is not None else "    n/a"))
    print(f"wrote {args.out}")
    return 0
