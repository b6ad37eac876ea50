"""CPU latency of the compact models of several runs, measured side by side in one process.

Each run's report carries a latency taken when that run ended, on whatever else the machine
was doing then; figures from different runs do not compare. This loads every run's
``model.safetensors`` and times them in rounds, in a rotating order, so that all of them see
the same machine: the median over rounds of one eval-mode forward pass at batch 1, and each
model's time as a ratio to the first run's.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/run_latency.py RUN_DIR...
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from compactcnn.files import modelfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = []
    for run in args.runs:
        model = modelfile.load(run / "model.safetensors").eval()
        shape = modelfile.input_shape(modelfile.spec_of(model))
        models.append((run, model, torch.randn(1, *shape)))
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for _, model, x in models:  # warm-up
            for _ in range(5):
                model(x)
        for r in range(args.rounds):
            for k in range(len(models)):
                i = (k + r) % len(models)
                _, model, x = models[i]
                start = time.perf_counter()
                model(x)
                times[i].append(time.perf_counter() - start)
    medians = [1000 * statistics.median(t) for t in times]
    print(f"| run | latency (ms, batch 1, {args.threads} thread) | ratio to the first |")
    print("|---|---|---|")
    for (run, _, _), ms in zip(models, medians, strict=True):
        print(f"| {run} | {ms:.3f} | {ms / medians[0]:.2f} |")


if __name__ == "__main__":
    main()
