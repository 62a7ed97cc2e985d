"""``mirai convert llamagen``: turn a LlamaGen GPT or VQ ``.pt`` into a Mirai checkpoint directory."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert foreign checkpoints to Mirai's format")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    p = sub.add_parser(
        "llamagen",
        help="a LlamaGen or PAR GPT (c2i_*.pt) or VQ (vq_ds*_c2i.pt) checkpoint",
        description="Reads the file with torch.load(weights_only=True) only; files holding pickled "
        "objects are refused. Writes a directory with model.safetensors (+ ema.safetensors) and config.json.",
    )
    p.add_argument("input", help="LlamaGen .pt/.pth file, hf://OWNER/REPO/FILE or a released name such as "
                   "llamagen:c2i_B_256 (docs/pretrained.md)")
    p.add_argument("output", help="Mirai checkpoint directory to write")
    p.add_argument("--kind", choices=["gpt", "vq"], help="default: detected from the weights")
    p.add_argument("--model", help="GPT config name (default: inferred from depth and width, e.g. GPT-B)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--grid-size", type=int, help="token grid of the GPT (16 for 256 px, 24 for 384 px; default: "
                      "the released-file table's, required for other GPT files)")
    grid.add_argument("--image-size", type=int, help="image size with a 16x-downsampling tokenizer")
    p.add_argument("--regions-per-side", type=int,
                   help="PAR's M, checked against the file (default: read from its learnable tokens; 1 = LlamaGen)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already at OUTPUT")
    p.set_defaults(func=run)


def _grid_size(args: argparse.Namespace) -> int | None:
    """The GPT's token grid from --grid-size, or --image-size / 16 (None: the table of released files
    decides, and a GPT file it does not know is refused)."""
    from mirai.data.options import positive_int
    from mirai.errors import ConfigError

    if args.grid_size is not None:
        return positive_int(args.grid_size, "--grid-size")
    if args.image_size is not None:
        if args.image_size < 16 or args.image_size % 16:
            raise ConfigError(f"--image-size {args.image_size} must be a positive multiple of 16 (LlamaGen's "
                              "tokenizers downsample 16x), e.g. 256 or 384; or give --grid-size")
        return args.image_size // 16
    return None


def run(args: argparse.Namespace) -> int:
    from mirai.checkpoint import check_output_dir, write_checkpoint
    from mirai.convert import read_llamagen
    from mirai.errors import ConfigError
    from mirai.hub.resolve import released_file, resolve
    from mirai.models.registry import GPT_CONFIGS

    # Every setting first, so that a bad one is named before a released checkpoint (GBs) is downloaded.
    check_output_dir(args.output, "output", overwrite=args.overwrite)
    grid = _grid_size(args)
    if args.model is not None and args.model not in GPT_CONFIGS:
        raise ConfigError(f"--model {args.model!r} is not a GPT config; choose one of {sorted(GPT_CONFIGS)}")
    if args.regions_per_side is not None and args.regions_per_side < 1:
        raise ConfigError(f"--regions-per-side must be at least 1, got {args.regions_per_side}")
    source = resolve(args.input, "input")
    if not source.exists():
        raise ConfigError(f"input {source} does not exist; give a LlamaGen .pt/.pth file")
    if source.is_dir():
        raise ConfigError(f"input {source} is a directory; give a LlamaGen .pt/.pth file (a Mirai checkpoint "
                          "directory needs no conversion)")
    check_output_dir(args.output, "output", inputs=[source], overwrite=args.overwrite)  # not the input itself
    entry = released_file(args.input)
    if grid is None and entry is not None and entry.kind == "gpt":
        print(entry.describe())
    ckpt = read_llamagen(source, kind=args.kind, name=args.model, grid_size=grid, regions_per_side=args.regions_per_side)
    write_checkpoint(args.output, ckpt)
    ema = " (+ EMA weights)" if ckpt.ema is not None else ""
    order = ckpt.args.get("order", "raster")
    par = f", PAR with {ckpt.args['regions_per_side']}x{ckpt.args['regions_per_side']} regions" if order == "par" else ""
    print(f"wrote {ckpt.kind} checkpoint {ckpt.name}{ema}{par} to {args.output}")
    return 0
