"""``mirai sample``: class-conditional images from a GPT + VQ pair, as a PNG grid and an ADM ``.npz``."""

from __future__ import annotations

import argparse


def _float_pair(text: str) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,END fractions such as 0,0.5, got {text!r}") from None
    return start, end


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="sample images from a GPT checkpoint (grid PNG + ADM .npz)",
        description="Grid mode (default): --per-class images for each of --classes (default: all), one row per "
        "class, written to OUT/grid.png and OUT/samples.npz. Evaluation mode (--num-samples N): N images with "
        "balanced or uniform class labels, resumable, split across processes under torchrun.",
    )
    p.add_argument("--gpt", required=True, help="GPT checkpoint: Mirai directory or LlamaGen .pt")
    p.add_argument("--vq", required=True, help="VQ tokenizer checkpoint: Mirai directory or LlamaGen .pt")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--classes", default="all", help="comma-separated class ids, or 'all' (default)")
    p.add_argument("--per-class", type=int, default=8, help="images per class in grid mode (default 8)")
    p.add_argument("--num-samples", type=int, help="evaluation mode: total number of samples")
    p.add_argument("--class-sampling", choices=["balanced", "uniform"], default="balanced",
                   help="evaluation mode: equal counts per class, or uniformly drawn labels as in LlamaGen")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guidance-interval", type=_float_pair, help="apply guidance only on this fraction of tokens")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--model", help="GPT config name for a LlamaGen .pt (default: inferred)")
    p.add_argument("--grid-size", type=int, default=16, help="token grid for a LlamaGen .pt (default 16)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from mirai.config import from_dict
    from mirai.convert import load_module
    from mirai.data.images import save_image_grid
    from mirai.errors import ConfigError
    from mirai.sampling.pipeline import SampleSettings, class_labels, sample_to_npz
    from mirai.training.distributed import barrier, init_distributed, shutdown

    settings = from_dict(SampleSettings, {
        "cfg_scale": args.cfg_scale, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "guidance_interval": args.guidance_interval, "precision": args.precision,
    })
    dist = init_distributed(args.device)
    gpt = load_module(args.gpt, "gpt", prefer_ema=not args.raw_weights, name=args.model, grid_size=args.grid_size)
    vq = load_module(args.vq, "vq")
    gpt.to(dist.device)
    vq.to(dist.device)
    n_classes = gpt.args.num_classes
    out = Path(args.out)
    if args.num_samples:
        labels = class_labels(n_classes, args.num_samples, args.class_sampling, seed=args.seed)
    else:
        classes = list(range(n_classes)) if args.classes == "all" else [int(c) for c in args.classes.split(",")]
        bad = [c for c in classes if not 0 <= c < n_classes]
        if bad:
            raise ConfigError(f"class ids {bad} are outside the model's {n_classes} classes")
        labels = np.repeat(classes, args.per_class)
    path = sample_to_npz(gpt, vq, labels, out / "samples.npz", settings, seed=args.seed,
                         batch_size=args.batch_size, rank=dist.rank, world_size=dist.world_size)
    barrier()
    if dist.is_main and path is None:  # other ranks finished after rank 0 looked: merge now
        path = sample_to_npz(gpt, vq, labels, out / "samples.npz", settings, seed=args.seed,
                             batch_size=args.batch_size, progress=False)
    if dist.is_main:
        images = np.load(path)["arr_0"]
        nrow = args.per_class if not args.num_samples else min(10, len(images))
        preview = images if not args.num_samples else images[:100]
        save_image_grid(preview, nrow, out / "grid.png")
        print(f"wrote {len(images)} samples to {path} and a grid to {out / 'grid.png'}")
    shutdown()
    return 0
