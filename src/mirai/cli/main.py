"""Entry point of the ``mirai`` command.

Each subcommand lives in its own module under ``mirai.cli`` and exposes
``add_parser(subparsers)``, which registers its parser and sets ``func``. Modules import
their heavy dependencies inside ``func`` so that ``mirai --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys

from mirai import __version__
from mirai.cli.flags import refuse_blank
from mirai.errors import FULL_DISK, MiraiError

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
    _record_prog(parser)
    return parser


def _record_prog(parser: argparse.ArgumentParser) -> None:
    """Let every (sub)command's namespace carry its own ``prog`` (``mirai convert llamagen``): the
    innermost parser's default wins, so ``command_name`` prefixes errors as argparse does."""
    parser.set_defaults(prog=parser.prog)
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _record_prog(child)


def command_name(args: argparse.Namespace) -> str:
    """The (sub)command as typed (``mirai encoder train-fashion``), the prefix of its errors, as argparse's own."""
    return getattr(args, "prog", "mirai")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``key=value`` overrides may sit on both sides of an option.

    argparse fills a ``nargs="*"`` positional from one run of words only, so in
    ``mirai train steps=5 --print-config seed=6`` the second override would be refused as
    unrecognised. Every later run of ``key=value`` words (and every word after ``--``) joins
    ``args.overrides`` in command-line order; anything else is refused, naming only those words.
    """
    args, extra = parser.parse_known_args(argv)
    refuse_blank(_parser_of(parser, command_name(args)), args)
    if not extra:
        return args
    command = command_name(args)
    takes_overrides = isinstance(getattr(args, "overrides", None), list)
    end = extra.index("--") if "--" in extra else len(extra)
    words = extra[:end] + extra[end + 1:]
    # Before "--", only key=value words are overrides; after it, every word is (the config names a bad one).
    bad = [w for w in extra[:end] if "=" not in w or w.startswith("-")] if takes_overrides else words
    if bad:
        hint = "; config overrides are key=value words" if takes_overrides else ""
        parser.exit(2, f"{command}: error: unrecognized arguments: {' '.join(bad)}{hint} (see {command} --help)\n")
    args.overrides.extend(words)  # parse_known_args keeps command-line order
    return args


def _parser_of(parser: argparse.ArgumentParser, prog: str) -> argparse.ArgumentParser:
    """The (sub)command parser whose ``prog`` is ``prog`` (``parser`` itself if none is)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found = _parser_of(child, prog)
                if found.prog == prog:
                    return found
    return parser


# A reader that went away: a closed pipe (`| head`), or a closed terminal (after SIGHUP, writes fail with EIO).
GONE = (errno.EPIPE, errno.EIO)


class _Outliving:
    """A text stream that, once its reader has gone (`mirai train | head`), discards what is written to it."""

    def __init__(self, stream):
        self._stream = stream

    def _to_null(self, err: OSError) -> None:
        if err.errno not in GONE:
            raise err
        # What is still buffered goes to /dev/null on the next flush, so the interpreter's flush at exit succeeds too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as err:
            self._to_null(err)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as err:
            self._to_null(err)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def outlive_reader():
    """Keep working when the reader of stdout or stderr goes away: a write would otherwise raise inside a training
    step or a sampling batch and stop a long command without its checkpoint or output files. Python ignores
    SIGPIPE, so a write to a closed pipe raises BrokenPipeError, and one to a closed terminal EIO; from the first
    one the stream is pointed at /dev/null and the command goes on (its log files are written as usual; a closed
    terminal's SIGHUP still stops training, after its checkpoint)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (_Outliving(s) if hasattr(s, "fileno") else s for s in saved)
    try:
        yield
        sys.stdout.flush()
    finally:
        sys.stdout, sys.stderr = saved


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = command_name(args)
    try:
        with outlive_reader():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as err:  # Ctrl-C, or a run that saved and stopped on a signal (Interrupted)
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"{command}: stopped by {signal.Signals(signum).name}" + (f": {err}" if str(err) else ""),
              file=sys.stderr)
        return 128 + signum
    except MiraiError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in FULL_DISK:
            raise
        # Every write is atomic (checkpoints, sample batches, stores), so what was finished before is intact.
        where = f" while writing {err.filename}" if err.filename else ""
        again = "with --resume (its checkpoints are kept)" if command == "mirai train" else "(what it finished is kept)"
        print(f"{command}: error: {os.strerror(err.errno)}{where}: free some space or choose another output "
              f"folder, then run the command again {again}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
