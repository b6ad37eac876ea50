"""The ``compactcnn`` command: a thin layer over the library, one subcommand per job.

Bad input gets one line on stderr and exit code 2, never a traceback; every subcommand has a
``--json`` form for machines beside its table for people.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from compactcnn.errors import CompactCNNError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        raise CompactCNNError(f"{self.prog}: {message}")


def _table(args: argparse.Namespace) -> int:
    from compactcnn.accounting import cascade, format_table, neuron_table, parse_removals
    from compactcnn.sources import parse_input, resolve

    shape = parse_input(args.input) if args.input else None
    removals = parse_removals(args.remove)
    model, shape, name = resolve(args.model, classes=args.classes, input_shape=shape)
    table = neuron_table(model, shape, name)
    if removals:
        table = cascade(model, table, removals)
    if args.json:
        print(json.dumps(table.as_dict(args.dtype, args.batch), indent=2))
    else:
        print(format_table(table, args.dtype, args.batch))
    return 0


def _compact(args: argparse.Namespace) -> int:
    from compactcnn import io
    from compactcnn.accounting import example_input
    from compactcnn.compaction import compact
    from compactcnn.sources import resolve

    out = _fresh_output(args.out, args.force)
    model, shape, _ = resolve(args.checkpoint)
    small, report = compact(model, example_input(shape), strict=args.strict)
    io.save(small, out)
    if args.json:
        print(json.dumps(report.as_dict() | {"out": str(out)}, indent=2))
    else:
        print(report.format())
        print(f"wrote {out}")
    return 0


def _fresh_output(path: str, force: bool) -> Path:
    out = Path(path)
    if out.exists() and not force:
        raise CompactCNNError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise CompactCNNError(f"cannot write {out}: folder {out.parent} does not exist")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compactcnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("table", help="the per-layer neuron table (the paper's Table 1)")
    t.add_argument("model", help="zoo name, model file, or package.module:callable")
    t.add_argument("--input", help="input shape C,H,W")
    t.add_argument("--classes", type=int, help="number of classes (zoo and import paths)")
    t.add_argument("--remove", action="append", default=[], metavar="LAYER=N",
                   help="show the table after removing N neurons of LAYER (repeatable)")
    t.add_argument("--dtype", default="float32",
                   choices=["float32", "float16", "bfloat16", "int8"])
    t.add_argument("--batch", type=int, default=1, help="batch size for the feature maps")
    t.add_argument("--json", action="store_true")
    t.set_defaults(run=_table)

    c = sub.add_parser("compact", help="remove dead neurons from a model file")
    c.add_argument("checkpoint", help="a model file with dead (all-zero) neurons")
    c.add_argument("--out", required=True, help="where to write the compact model")
    c.add_argument("--strict", action="store_true",
                   help="fail instead of keeping one neuron of a layer that died entirely")
    c.add_argument("--force", action="store_true", help="replace --out if it exists")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=_compact)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except CompactCNNError as e:
        print(f"compactcnn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("compactcnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
