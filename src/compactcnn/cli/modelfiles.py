"""``compact`` and ``export``: turn a model file (or a model from an import path) into a
smaller model file, or into a deployment file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compactcnn.cli.common import add_input_arguments, fresh_output, model_from
from compactcnn.errors import CompactCNNError


def _compact(args: argparse.Namespace) -> int:
    from compactcnn.files import modelfile
    from compactcnn.surgery import compact

    out = fresh_output(args.out, args.force)
    model, shape, _ = model_from(args, args.checkpoint)
    small, report = compact(model, shape, strict=args.strict)
    modelfile.save(small, out)
    if args.json:
        print(json.dumps(report.as_dict() | {"out": str(out)}, indent=2))
    else:
        print(report.format())
        print(f"wrote {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from compactcnn.deploy import EXPORTERS
    from compactcnn.run.rundir import MODEL, run_file

    wanted = {name: getattr(args, name) for name in EXPORTERS if getattr(args, name)}
    if not wanted:
        raise CompactCNNError("export: name at least one of "
                              + ", ".join(f"--{name} FILE" for name in EXPORTERS))
    source = Path(args.source)
    model_file = run_file(source, MODEL) if source.is_dir() else source
    model, shape, _ = model_from(args, str(model_file))
    result: dict = {"model": str(model_file)}
    for name, path in wanted.items():
        out = fresh_output(path, args.force)
        result[name] = {"file": str(out)} | EXPORTERS[name](model, shape, out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in wanted:
            r = result[name]
            how = f" ({r['exporter']} exporter)" if "exporter" in r else ""
            print(f"wrote {r['file']}{how}: max |{name} - pytorch| = {r['max_abs_diff']:.3g}")
    return 0


def add_commands(sub) -> None:
    from compactcnn.deploy import EXPORTERS

    c = sub.add_parser("compact", help="remove dead neurons from a model file")
    c.add_argument("checkpoint", help="a model file with dead (all-zero) neurons, or "
                   "package.module:callable (the file it writes records that import path)")
    add_input_arguments(c)
    c.add_argument("--out", required=True, help="where to write the compact model")
    c.add_argument("--strict", action="store_true",
                   help="fail instead of keeping one neuron of a layer that died entirely")
    c.add_argument("--force", action="store_true", help="replace --out if it exists")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=_compact)

    e = sub.add_parser("export", help="export a compact model: " + ", ".join(EXPORTERS))
    e.add_argument("source", help="a run folder, a model file, or package.module:callable")
    add_input_arguments(e)
    for name in EXPORTERS:
        e.add_argument(f"--{name}", metavar="FILE", help=f"write {name} and check its outputs")
    e.add_argument("--force", action="store_true", help="replace existing files")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=_export)
