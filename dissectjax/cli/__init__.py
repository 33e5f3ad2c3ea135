"""The ``dissectjax`` command line: a thin face over the library (docs/ARCHITECTURE.md, Command line).

One module per command group parses flags into the library's configs and prints tables;
every workflow lives in the library. Only :class:`~dissectjax.errors.DissectError` is turned
into a one-line error (status 2); any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dissectjax.cli import analysis, convert, debug, dissect, knowledge, localize, report, specialize, surgery, train
from dissectjax.errors import DissectError
from dissectjax.flags import OneLineParser
from dissectjax.version import __version__

COMMAND_GROUPS = (dissect, train, surgery, knowledge, debug, analysis, report, convert, specialize, localize)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="dissectjax", description="Network Dissection in JAX/Flax.")
    p.add_argument("--version", action="version", version=f"dissectjax {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("bench", help="throughput benchmarks (dissectjax bench --help)", add_help=False)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own flags: see dissectjax/bench.py
        from dissectjax.bench import main as bench_main

        return bench_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # bad flags (status 2, one line already printed), --help or --version (0)
        return int(e.code or 0)
    if getattr(args, "deprecated", None):
        print(f"dissectjax {args.command}: deprecated: {args.deprecated}", file=sys.stderr)
    try:
        return args.func(args)
    except DissectError as e:
        print(f"dissectjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dissectjax {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
