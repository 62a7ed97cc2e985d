"""``mirai encoder``: train and measure the Fashion-MNIST foresight encoder, inspect any encoder."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from mirai.cli.flags import add_flag

    parser = subparsers.add_parser("encoder", help="foresight encoders: train the Fashion-MNIST one, probe, inspect")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = sub.add_parser(
        "train-fashion",
        help="train the small Fashion-MNIST foresight encoder (the label-free fashion8_ssl recipe by default)",
        description="Trains FashionEncoderNet on the Fashion-MNIST training split and writes a Mirai "
        "checkpoint directory (config.json + model.safetensors) usable as build_encoder(DIR). "
        "Runs on the CPU with --threads threads; the linear probe is measured at the end unless --no-probe.",
    )
    t.add_argument("--grid", type=int, default=8, choices=[8, 16], help="feature grid for 32×32 images")
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--objective", default="ssl", choices=["ssl", "supervised"],
                   help="ssl (default, the fashion8_ssl recipe): contrastive, no labels; supervised (the "
                   "fashion8 recipe): labels for the global term")
    t.add_argument("--epochs", type=float, default=None,
                   help="passes over the 60 000 training images (default: the objective's recipe, 2 or 3)")
    t.add_argument("--batch-size", type=int, default=None, help="images per step (default 256)")
    t.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 2e-3)")
    t.add_argument("--seed", type=int, default=None, help="seeds weights, views and data order (default 0)")
    t.add_argument("--crop-min", type=float, default=None,
                   help="smallest crop area of an augmented view (default: the objective's recipe, 0.35 or 0.8)")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_flag(t, "--data-root", ("--root",), dest="root", help="Fashion-MNIST folder (default: see "
             "mirai.data.fashion_mnist)")
    t.add_argument("--no-probe", action="store_true", help="skip the linear probe after training")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already at --out")
    t.set_defaults(func=run_train)

    p = sub.add_parser(
        "probe",
        help="linear-probe accuracy of an encoder on Fashion-MNIST (mean-pooled grid features)",
        description="Fits multinomial logistic regression on mean-pooled features of the training "
        "split and reports accuracy on the test split.",
    )
    p.add_argument("encoder", help="checkpoint directory, 'fashion8_ssl' or 'fashion8', a timm encoder name or a JSON spec")
    p.add_argument("--grid", type=int, default=8, help="token grid the encoder is built for")
    p.add_argument("--n-train", type=int, help="use only the first N training images")
    p.add_argument("--n-test", type=int, help="use only the first N test images")
    p.add_argument("--threads", type=int, default=1)
    add_flag(p, "--data-root", ("--root",), dest="root", help="Fashion-MNIST folder")
    p.set_defaults(func=run_probe)

    i = sub.add_parser("info", help="build an encoder and print its grid, feature size and input size")
    i.add_argument("encoder", help="name, checkpoint directory, or JSON dict spec")
    i.add_argument("--grid", type=int, help="token grid (default: a checkpoint's own grid, else 16)")
    i.set_defaults(func=run_info)


def _spec(text: str) -> str | dict:
    import json

    from mirai.errors import ConfigError

    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"encoder spec {text!r} is not valid JSON: {err}") from None
    return text


def _threads(count: int) -> None:
    """Use ``count`` torch CPU threads (``ConfigError`` unless it is at least 1)."""
    import torch

    from mirai.data.options import positive_int

    torch.set_num_threads(positive_int(count, "--threads"))


def run_train(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from mirai import checkpoint
    from mirai.builders.encoder import FashionTrainConfig, parameter_count, train_fashion_encoder
    from mirai.builders.encoder_probe import linear_probe
    from mirai.checkpoint import check_output_dir
    from mirai.foresight.encoders import GridNetEncoder

    overrides = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                   "seed": args.seed, "crop_min": args.crop_min}.items() if v is not None}
    cfg = FashionTrainConfig(grid=args.grid, objective=args.objective, **overrides).resolved()
    # Training takes minutes: every setting and the output are checked first.
    check_output_dir(args.out, "--out", overwrite=args.overwrite)
    _threads(args.threads)
    net, log = train_fashion_encoder(cfg, root=args.root)
    meta = {"train_config": asdict(cfg), "uses_labels": cfg.objective == "supervised",
            "parameters": parameter_count(net), "train_seconds": log["seconds"], "threads": args.threads,
            "loss_history": log["history"]}
    if not args.no_probe:
        meta["linear_probe"] = linear_probe(GridNetEncoder(net, cfg.grid), root=args.root)
    checkpoint.save(args.out, net, meta=meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "loss_history"}, indent=2))
    print(f"wrote fashion encoder to {args.out}")
    return 0


def run_probe(args: argparse.Namespace) -> int:
    import json

    from mirai.builders.encoder_probe import linear_probe
    from mirai.foresight.encoders import build_encoder

    _threads(args.threads)
    encoder = build_encoder(_spec(args.encoder), args.grid)
    result = linear_probe(encoder, root=args.root, n_train=args.n_train, n_test=args.n_test)
    print(json.dumps(result, indent=2))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from mirai.foresight.encoders import build_encoder

    grid = args.grid
    if grid is None:  # a trained encoder's own grid (fashion/encoder8: 8), not a fixed default
        import json

        from mirai.hub.resolve import resolve

        from mirai.foresight.encoders import FASHION_ASSETS

        try:
            folder = FASHION_ASSETS.get(args.encoder) or resolve(args.encoder)  # short names: their asset's grid
            grid = json.loads((folder / "config.json").read_text())["args"]["grid"]
        except (OSError, ValueError, KeyError, TypeError):
            grid = 16
    encoder = build_encoder(_spec(args.encoder), grid)
    params = sum(p.numel() for p in encoder.parameters())
    print(f"{type(encoder).__name__}: grid {encoder.grid_size}×{encoder.grid_size}, "
          f"features {encoder.feature_dim}, input {encoder.input_size} px, "
          f"{params / 1e6:.2f} M frozen parameters")
    return 0
