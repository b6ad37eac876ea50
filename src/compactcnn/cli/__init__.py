"""The ``compactcnn`` command: a thin layer over the library, one subcommand per job.

Bad input gets one line on stderr and exit code 2, never a traceback; every subcommand has a
``--json`` form for machines beside its table for people. Each module of this package adds
its subcommands to the parser; the choices and defaults they show come from the library's
registries and its configuration type.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from compactcnn.cli import compare, deploy, inspect, modelfiles, training
from compactcnn.cli.common import EXIT_USAGE, Parser
from compactcnn.errors import CompactCNNError

COMMANDS = (inspect, training, compare, modelfiles, deploy)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="compactcnn", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS:
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        if any("\x00" in a for a in (sys.argv[1:] if argv is None else argv)):
            # No shell can pass one; from Python it would reach the OS as a path and fail there.
            raise CompactCNNError("arguments cannot contain NUL bytes")
        args = build_parser().parse_args(argv)
        command: Callable[[argparse.Namespace], int] = args.run
        return command(args)
    except CompactCNNError as e:
        print(f"compactcnn: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("compactcnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `compactcnn report RUN | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
