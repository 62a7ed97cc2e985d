"""``mirai convert llamagen``: turn a LlamaGen GPT or VQ ``.pt`` into a Mirai checkpoint directory."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert foreign checkpoints to Mirai's format")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    p = sub.add_parser(
        "llamagen",
        help="a LlamaGen GPT (c2i_*.pt) or VQ (vq_ds*_c2i.pt) checkpoint",
        description="Reads the file with torch.load(weights_only=True) only; files holding pickled "
        "objects are refused. Writes a directory with model.safetensors (+ ema.safetensors) and config.json.",
    )
    p.add_argument("input", help="LlamaGen .pt/.pth file")
    p.add_argument("output", help="Mirai checkpoint directory to write")
    p.add_argument("--kind", choices=["gpt", "vq"], help="default: detected from the weights")
    p.add_argument("--model", help="GPT config name (default: inferred from depth and width, e.g. GPT-B)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--grid-size", type=int, help="token grid of the GPT (16 for 256 px, 24 for 384 px)")
    grid.add_argument("--image-size", type=int, help="image size with a 16x-downsampling tokenizer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirai.checkpoint import write_checkpoint
    from mirai.convert import read_llamagen

    grid = args.grid_size or (args.image_size // 16 if args.image_size else 16)
    ckpt = read_llamagen(args.input, kind=args.kind, name=args.model, grid_size=grid)
    write_checkpoint(args.output, ckpt)
    ema = " (+ EMA weights)" if ckpt.ema is not None else ""
    print(f"wrote {ckpt.kind} checkpoint {ckpt.name}{ema} to {args.output}")
    return 0
