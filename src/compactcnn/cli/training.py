"""``train`` and ``report``: a run from data to compact model, and its figures afterwards."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from compactcnn.errors import CompactCNNError


def _train(args: argparse.Namespace) -> int:
    from compactcnn.run import report
    from compactcnn.run.device import pick_device
    from compactcnn.run.pipeline import run
    from compactcnn.run.toml import config_from

    cfg = config_from(args)
    device = pick_device(args.device)
    if args.workers < 0:
        raise CompactCNNError("--workers must be >= 0")
    try:
        result = run(cfg, Path(args.out), resuming=args.resume, device=device,
                     workers=args.workers)
    except KeyboardInterrupt:
        print(f"compactcnn: interrupted; the checkpoint of the last finished epoch is in "
              f"{args.out}. Resume with the same options plus --resume.", file=sys.stderr)
        return 130
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(json.dumps(result, indent=2) if args.json else report.summary(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    from compactcnn.run import report

    result = report.read(args.run_dir)
    print(json.dumps(result, indent=2) if args.json else report.summary(result))
    return 0


def add_config_options(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One option per field of the run configuration, with its help, type and choices.

    Every default is None here, so that only what the user typed overrides the TOML file;
    the defaults shown are the configuration's own.
    """
    from compactcnn.run.config import TrainConfig, field_type

    p.add_argument("--config", metavar="FILE.toml",
                   help="options from a TOML file; the command line wins")
    for f in fields(TrainConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = "" if f.default in (MISSING, None) else f" (default {f.default})"
        kind = field_type(f.name)
        if kind is bool:
            p.add_argument(flag, action="store_true", default=None, help=f.metadata["help"])
        else:
            p.add_argument(flag, type=kind, choices=f.metadata.get("choices"),
                           help=f.metadata["help"] + default)


def add_commands(sub) -> None:
    t = sub.add_parser("train", help="train with sparse constraints, compact, report")
    add_config_options(t)
    t.add_argument("--out", required=True, help="the run folder, e.g. runs/lenet5")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--workers", type=int, default=0, help="data loader processes")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (training only; "
                   "compaction and the report run on the CPU)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(run=_train)

    r = sub.add_parser("report", help="print the report of a finished run")
    r.add_argument("run_dir", metavar="RUN", help="a run folder (or its report.json)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(run=_report)
