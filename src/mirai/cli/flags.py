"""One flag name per concept across subcommands, with the older names kept as hidden aliases.

Canonical names: ``--gpt`` (a GPT checkpoint), ``--tokenizer`` (a VQ tokenizer), ``--data-root``
(a dataset folder). Older spellings (``--checkpoint``, ``--vq``, ``--root``, ``--source-root``)
still parse into the same value but are left out of ``--help`` (``argparse.SUPPRESS``).
"""

from __future__ import annotations

import argparse


def add_flag(parser: argparse.ArgumentParser, name: str, aliases: tuple[str, ...] = (), *, required: bool = False,
             **kwargs) -> None:
    """Add ``name`` (shown in --help) and each of ``aliases`` (hidden), all writing ``name``'s dest.

    ``required``: one of them must be given (argparse's error then names ``name`` only);
    ``action="append"`` collects the values of every spelling into one list."""
    dest = kwargs.pop("dest", name.lstrip("-").replace("-", "_"))
    group = parser.add_mutually_exclusive_group(required=required) if required and aliases else parser
    if kwargs.get("action") == "append":  # repeated flags of both spellings must all be kept
        group = parser
    group.add_argument(name, dest=dest, required=required and group is parser and not aliases, **kwargs)
    hidden = {k: v for k, v in kwargs.items() if k not in ("help", "metavar")}
    for alias in aliases:
        group.add_argument(alias, dest=dest, help=argparse.SUPPRESS, **hidden)


def refuse_blank(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit (status 2, argparse's usage error) when an argument of ``parser`` was given as an empty
    string (``--out ''``): as a path it would silently mean the current folder, and no argument of
    any command means anything as ''. ``key=value`` overrides and words handed on to another parser
    (``nargs=REMAINDER``) are left to the config and that parser."""
    for action in parser._actions:
        if action.dest == "overrides" or action.nargs == argparse.REMAINDER:
            continue
        value = getattr(args, action.dest, None)
        if any(isinstance(v, str) and not v.strip() for v in (value if isinstance(value, list) else [value])):
            name = action.option_strings[-1] if action.option_strings else action.metavar or action.dest
            parser.exit(2, f"{parser.prog}: error: {name} is empty; give a value (see {parser.prog} --help)\n")
