"""``compare``: every method at one budget, side by side (see compactcnn.run.compare)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compactcnn.cli.training import add_config_options
from compactcnn.errors import CompactCNNError


def _compare(args: argparse.Namespace) -> int:
    from compactcnn.run.compare import DEFAULT_METHODS, compare
    from compactcnn.run.compare_report import markdown, seeds_markdown
    from compactcnn.run.device import pick_device
    from compactcnn.run.seeds import compare_seeds
    from compactcnn.run.toml import config_from

    if args.seeds is not None and args.seed is not None:
        raise CompactCNNError("give --seed (one comparison) or --seeds (one per seed), "
                              "not both")
    cfg = config_from(args)
    device = pick_device(args.device)
    methods = tuple(args.methods or DEFAULT_METHODS)
    dense = None if args.dense is None else Path(args.dense)
    jobs = 1 if args.jobs is None else args.jobs
    if args.seeds is None:
        result = compare(cfg, Path(args.out), methods, str(device), dense=dense, jobs=jobs)
        text = markdown(result)
    else:
        result = compare_seeds(cfg, Path(args.out), args.seeds, methods, str(device),
                               dense=dense, jobs=jobs)
        text = seeds_markdown(result)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


def add_commands(sub) -> None:
    from compactcnn.methods import METHODS

    c = sub.add_parser("compare", help="every method at one budget, side by side")
    add_config_options(c, exclude=("method", "widths", "reg"))
    c.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD",
                   help="which methods (default: all): " + ", ".join(METHODS))
    c.add_argument("--out", required=True, help="the comparison folder; each method runs in "
                   "a subfolder, and a rerun picks up the finished ones")
    c.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="one comparison per seed (in OUT/seed-S), and a summary over them: "
                   "each method's mean and spread, and ours against it paired by seed, "
                   "called ahead or behind only where the 95%% interval excludes zero")
    c.add_argument("--jobs", type=int, metavar="N", help="train N runs at once (over all the "
                   "seeds with --seeds), each in its own process with its share of the threads "
                   "and its output in its folder's log.txt (default: one at a time)")
    c.add_argument("--dense", metavar="RUN_DIR", help="read the dense row back from this "
                   "finished run (another comparison's dense folder, run with the same options) "
                   "instead of training it again; with --seeds, another comparison's OUT")
    c.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (training only)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=_compare)
