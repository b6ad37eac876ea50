"""The ``compactcnn`` command: a thin layer over the library, one subcommand per job.

Bad input gets one line on stderr and exit code 2, never a traceback; every subcommand has a
``--json`` form for machines beside its table for people.
"""

from __future__ import annotations

import argparse
import json
import os
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

    shape = parse_input(args.input) if args.input is not None else None
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


def _train(args: argparse.Namespace) -> int:
    from compactcnn import report
    from compactcnn.config import config_from
    from compactcnn.pipeline import run
    from compactcnn.training import pick_device

    cfg = config_from(args)
    device = pick_device(args.device)
    try:
        if args.workers < 0:
            raise CompactCNNError("--workers must be >= 0")
        result = run(cfg, Path(args.out), resuming=args.resume, device=device,
                     workers=args.workers)
        if result is None:  # a torchrun rank other than 0: rank 0 reports
            return 0
    except KeyboardInterrupt:
        print(f"compactcnn: interrupted; the checkpoint of the last finished epoch is in "
              f"{args.out}. Resume with the same options plus --resume.", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2) if args.json else report.summary(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    from compactcnn import report

    result = report.read(args.run_dir)
    print(json.dumps(result, indent=2) if args.json else report.summary(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from compactcnn import export
    from compactcnn.pipeline import run_file
    from compactcnn.sources import resolve

    if not (args.onnx or args.torchscript):
        raise CompactCNNError("export: name at least one of --onnx FILE, --torchscript FILE")
    source = Path(args.source)
    model_file = run_file(source, "model.safetensors") if source.is_dir() else source
    model, shape, _ = resolve(str(model_file))
    result: dict = {"model": str(model_file)}
    if args.onnx:
        out = _fresh_output(args.onnx, args.force)
        result["onnx"] = {"file": str(out), "max_abs_diff": export.to_onnx(model, shape, out)}
    if args.torchscript:
        out = _fresh_output(args.torchscript, args.force)
        result["torchscript"] = {"file": str(out),
                                 "max_abs_diff": export.to_torchscript(model, shape, out)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for kind in ("onnx", "torchscript"):
            if kind in result:
                r = result[kind]
                print(f"wrote {r['file']}: max |{kind} - pytorch| = {r['max_abs_diff']:.3g}")
    return 0


def _groups(args: argparse.Namespace) -> int:
    from compactcnn.accounting import example_input
    from compactcnn.groups import describe, neuron_groups
    from compactcnn.sources import parse_input, resolve

    shape = parse_input(args.input) if args.input is not None else None
    model, shape, _ = resolve(args.model, classes=args.classes, input_shape=shape)
    groups = neuron_groups(model, example_input(shape), full=args.full)
    if args.json:
        print(json.dumps([{"name": g.name, "layers": list(g.layers), "neurons": g.size,
                           "slices": [{"param": s.name, "dim": s.dim, "role": s.role,
                                       "per_neuron": s.per_neuron} for s in g.slices]}
                          for g in groups], indent=2))
    else:
        print(describe(groups))
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
    g = sub.add_parser("groups", help="which parameter slices make up each neuron")
    g.add_argument("model", help="zoo name, model file, or package.module:callable")
    g.add_argument("--input", help="input shape C,H,W")
    g.add_argument("--classes", type=int, help="number of classes (zoo and import paths)")
    g.add_argument("--full", action="store_true",
                   help="also the next layer's input slices of each neuron")
    g.add_argument("--json", action="store_true")
    g.set_defaults(run=_groups)

    _train_parser(sub)

    r = sub.add_parser("report", help="print the report of a finished run")
    r.add_argument("run_dir", metavar="RUN", help="a run folder (or its report.json)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(run=_report)

    e = sub.add_parser("export", help="export a compact model to ONNX or TorchScript")
    e.add_argument("source", help="a run folder or a model file")
    e.add_argument("--onnx", metavar="FILE", help="write ONNX and check it with ONNX Runtime")
    e.add_argument("--torchscript", metavar="FILE", help="write a traced TorchScript file")
    e.add_argument("--force", action="store_true", help="replace existing files")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=_export)
    return parser


def _train_parser(sub) -> None:
    from compactcnn.training import REGULARISERS

    t = sub.add_parser("train", help="train with sparse constraints, compact, report")
    t.add_argument("--config", metavar="FILE.toml", help="options from a TOML file; the "
                   "command line wins")
    t.add_argument("--model", help="zoo name (default lenet5)")
    t.add_argument("--data", help="fashion-mnist, folder:PATH or synthetic")
    t.add_argument("--data-dir", help="another copy of the Fashion-MNIST IDX files")
    t.add_argument("--reg", choices=REGULARISERS, help="the sparse constraint (default group)")
    t.add_argument("--lam", type=float, help="penalty weight (default 3e-4)")
    t.add_argument("--lam1", type=float, help="l1 weight of sparse-group")
    t.add_argument("--epochs", type=int)
    t.add_argument("--finetune-epochs", type=int, help="train the compact model N more epochs")
    t.add_argument("--optimizer", choices=["sgd", "adam"])
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--limit", type=int, help="use only the first N training images")
    t.add_argument("--test-limit", type=int, help="use only the first N test images")
    t.add_argument("--warmup-epochs", type=float, help="ramp lam from 0 over these epochs")
    t.add_argument("--lr-warmup-epochs", type=float,
                   help="ramp the learning rate from lr/10 over these epochs")
    t.add_argument("--augment", action="store_true", default=None)
    t.add_argument("--out", required=True, help="the run folder, e.g. runs/lenet5")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--workers", type=int, default=0, help="data loader processes")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (training only; "
                   "compaction and the report run on the CPU)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(run=_train)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        command: Callable[[argparse.Namespace], int] = args.run
        return command(args)
    except CompactCNNError as e:
        print(f"compactcnn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("compactcnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `compactcnn report RUN | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
