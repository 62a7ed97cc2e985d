"""``mirai tokenizer train|eval``: train a VQ tokenizer and measure its reconstructions."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    from mirai.cli.flags import add_flag

    parser = subparsers.add_parser("tokenizer", help="train or evaluate a VQ image tokenizer")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser(
        "train", help="train a VQ tokenizer on Fashion-MNIST",
        description="Writes config.yaml, log.jsonl, checkpoint/ and report.json to out_dir.",
    )
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/tokenizer/fashion_vq8.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=500 out_dir=runs/x")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "eval", help="reconstruction MSE/PSNR and codebook usage on Fashion-MNIST",
        description="Metrics on the [0, 1] pixel scale, averaged per image. With --kmeans, also fits the "
        "k-means baseline: the same number of codes over pixel patches as large as the tokenizer's "
        "downsample factor, so both produce the same token grid.",
    )
    add_flag(p, "--tokenizer", ("--checkpoint",), dest="checkpoint", required=True, metavar="TOKENIZER",
             help="VQ tokenizer: Mirai checkpoint folder, asset name (fashion/vq8) or hf://OWNER/REPO")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    add_flag(p, "--data-root", ("--root",), dest="root", help="Fashion-MNIST folder (default: the dataset's "
             "search order)")
    p.add_argument("--kmeans", action="store_true", help="also report the k-means patch baseline")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    p.add_argument("--json", help="also write the report to this file")
    p.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from mirai.config import load_config
    from mirai.builders.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides)
    _, report = train_tokenizer(cfg, progress=not args.no_progress)
    print(f"held-out PSNR {report['psnr']:.2f} dB, MSE {report['mse']:.5f}, "
          f"{report['codes_used']}/{report['codebook_size']} codes used; checkpoint in {cfg.out_dir}/checkpoint")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from mirai.builders.tokenizer.train import evaluate_checkpoint
    from mirai.data.options import check_output_file, non_negative_int

    non_negative_int(args.threads, "--threads (0 keeps PyTorch's default)")
    if args.json:
        check_output_file(args.json, "--json", inputs=[args.checkpoint], usual_suffix=".json")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = evaluate_checkpoint(args.checkpoint, args.split, limit=args.limit, root=args.root, kmeans=args.kmeans,
                                 batch_size=args.batch_size)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0
