"""Wall time of one ``compactcnn compare`` trained one run at a time against ``--jobs N``.

A lenet5 training uses little of a multi-core CPU (its layers are small), so running whole
runs side by side should beat giving one run every thread. Each setting trains the same
comparison from scratch in its own folder, one after the other; the machine should be
otherwise idle. One process gets every thread; with ``--jobs N`` each run gets its share.

    PYTHONPATH=src .venv/bin/python benchmarks/compare_jobs.py [--jobs 1 2] [--limit 6000] \\
        [--epochs 2] --out runs/bench-jobs
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from compactcnn.run.compare import compare
from compactcnn.run.config import TrainConfig

METHODS = ("group+low-rank", "torch-pruning", "l1-filter", "uniform", "scratch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--limit", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = TrainConfig(model="lenet5", data="fashion-mnist", target="params=0.10",
                      epochs=args.epochs, limit=args.limit, test_limit=2000,
                      prune_fraction=0.5)
    print(f"lenet5, {args.limit} training images, {args.epochs} epochs, {len(METHODS) + 1} "
          f"runs ({', '.join(METHODS)} and dense); {torch.get_num_threads()} threads")
    print(f"{'jobs':>4} {'threads per run':>16} {'wall s':>8} {'ratio':>6}")
    first = None
    for jobs in args.jobs:
        out = args.out / f"jobs-{jobs}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        compare(cfg, out, METHODS, jobs=jobs)
        wall = time.perf_counter() - start
        first = first or wall
        print(f"{jobs:>4} {max(1, torch.get_num_threads() // jobs):>16} {wall:>8.1f} "
              f"{wall / first:>6.2f}")


if __name__ == "__main__":
    main()
