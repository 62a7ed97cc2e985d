"""Entry point of the ``mirai`` command.

Each subcommand lives in its own module under ``mirai.cli`` and exposes
``add_parser(subparsers)``, which registers its parser and sets ``func``. Modules import
their heavy dependencies inside ``func`` so that ``mirai --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from mirai import __version__
from mirai.errors import MiraiError

# Subcommand modules, in the order ``mirai --help`` lists them.
COMMANDS = [
    "demo",
    "tokenizer",
    "extract",
    "data",
    "train",
    "convert",
    "sample",
    "serve",
    "evaluate",
    "flops",
    "encoder",
    "bench",
    "analyze",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirai", description="Autoregressive image generation with foresight alignment."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mirai.cli.{name}").add_parser(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``key=value`` overrides may sit on both sides of an option.

    argparse fills a ``nargs="*"`` positional from one run of words only, so in
    ``mirai train steps=5 --resume steps=6`` the second override would be refused as unrecognised.
    Every later run of ``key=value`` words joins ``args.overrides`` in command-line order; anything
    else unrecognised is still refused with argparse's usual message.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
        "=" in word and not word.startswith("-") for word in extra
    ):
        args.overrides.extend(extra)  # parse_known_args keeps the leftovers in command-line order
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:  # Ctrl-C, or a run that saved and stopped on a signal (Interrupted)
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"mirai {args.command}: stopped by {signal.Signals(signum).name}" + (f": {err}" if str(err) else ""),
              file=sys.stderr)
        return 128 + signum
    except MiraiError as err:
        print(f"mirai {args.command}: error: {err}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
