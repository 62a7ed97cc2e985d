"""``mirai serve CHECKPOINT``: a local web page to sample a GPT: pick classes and settings, see a grid.

Needs the ``serve`` extra (Flask). Everything that would make every request fail (a missing or
mismatched checkpoint, a bad option, a port in use) is refused before the server starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a local web page that samples a GPT checkpoint (needs the 'serve' extra)",
        description="Serve a page where you pick classes (by name when known), guidance scale, temperature, "
        "top-k, seed and images per class, and see the sampled grid. Stop it with Ctrl-C. Needs Flask: "
        "pip install 'mirai-foresight[serve]'.",
    )
    what = "GPT checkpoint: Mirai folder, LlamaGen/PAR .pt, hf://... or a released name"
    p.add_argument("--gpt", help=what)
    # `mirai serve CHECKPOINT` reads naturally for a one-model command; --gpt is the flag the other commands use.
    p.add_argument("checkpoint", nargs="?", help=f"{what} (the same as --gpt)")
    p.add_argument("--tokenizer", help="VQ tokenizer the GPT was trained with (e.g. fashion/vq8); default: the one "
                   "recorded by the checkpoint's training codes")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
    p.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--max-images", type=int, default=64,
                   help="most images in one grid, i.e. in one batch on the device (default 64)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--model", help="GPT config name for a LlamaGen .pt (default: inferred)")
    p.add_argument("--grid-size", type=int, help="token grid for a LlamaGen .pt the table of released files "
                   "does not know (16 for 256 px, 24 for 384 px)")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    from mirai.errors import ConfigError
    from mirai.serve.app import create_app, listen, load_generator, require_flask, serve

    if (args.gpt is None) == (args.checkpoint is None):
        raise ConfigError("give the GPT checkpoint once: mirai serve CHECKPOINT, or --gpt CHECKPOINT")
    require_flask()  # before loading anything: the one-line fix comes first
    if args.grid_size is not None and args.grid_size < 1:
        raise ConfigError(f"--grid-size must be at least 1 (16 for 256 px, 24 for 384 px), got {args.grid_size}")
    sock = listen(args.host, args.port)  # checked (and held) before the models load, so no load is wasted
    try:
        generator = load_generator(args.gpt or args.checkpoint, args.tokenizer, device=args.device,
                                   prefer_ema=not args.raw_weights, model=args.model, grid_size=args.grid_size,
                                   max_images=args.max_images)
        app = create_app(generator)
    except BaseException:
        sock.close()
        raise
    named = "by name" if generator.class_names is not None else "by index"
    a = generator.gpt.args
    print(f"{generator.title}: {a.num_classes} classes ({named}), {a.grid_size}x{a.grid_size} tokens, "
          f"on {next(generator.gpt.parameters()).device}")
    if not _is_loopback(args.host):
        print(f"warning: --host {args.host} lets other machines use this page (and this device)", file=sys.stderr)
    serve(app, sock, announce=lambda line: print(line, flush=True))
    return 0
