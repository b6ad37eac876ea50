"""CPU latency of dense models against their compact versions, beside the FLOPs they save.

For each model and share of dead neurons, that share of every group's neurons is zeroed (all
of each neuron's scalars, as the proximal optimizer leaves them) and the model is compacted.
The dense model and the compact one then run interleaved on the same input, alternating
which goes first, and the median of the timed runs is reported. A FLOPs ratio is arithmetic;
the time ratio is what a CPU makes of it.

    PYTHONPATH=src .venv/bin/python benchmarks/compact_latency.py [--json] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from compactcnn import models
from compactcnn.sparsity import neuron_groups
from compactcnn.surgery import compact


def kill(model: nn.Module, example: torch.Tensor, share: float, seed: int = 0) -> None:
    """Zero ``share`` of the neurons of every group (rounded, at least one neuron kept)."""
    g = torch.Generator().manual_seed(seed)
    for group in neuron_groups(model, example):
        n = min(round(share * group.size), group.size - 1)
        matrix = group.matrix()
        matrix[torch.randperm(group.size, generator=g)[:n]] = 0.0
        group.write(matrix)


def median_ms(dense: nn.Module, small: nn.Module, x: torch.Tensor, runs: int,
              warmup: int) -> tuple[float, float]:
    times: dict[str, list[float]] = {"dense": [], "compact": []}
    pair = [("dense", dense), ("compact", small)]
    with torch.inference_mode():
        for _ in range(warmup):
            dense(x), small(x)
        for i in range(runs):
            for name, model in pair if i % 2 == 0 else pair[::-1]:
                start = time.perf_counter_ns()
                model(x)
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times["dense"]), statistics.median(times["compact"])


def measure(name: str, share: float, batches: list[int], runs: int, warmup: int) -> list[dict]:
    torch.manual_seed(0)
    d = models.defaults(name)
    shape = (d["in_channels"], d["input_size"], d["input_size"])
    dense = models.create(name, num_classes=10).eval()
    kill(dense, torch.randn(1, *shape), share)
    small, report = compact(dense, torch.randn(2, *shape))
    small.eval()
    rows = []
    for batch in batches:
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            diff = (dense(x) - small(x)).abs().max().item()
        t_dense, t_small = median_ms(dense, small, x, runs, warmup)
        rows.append({
            "model": name, "dead_share": share, "batch": batch,
            "neurons": [report.before.neurons, report.after.neurons],
            "params": [report.before.total_params, report.after.total_params],
            "flops": [report.flops_before, report.flops_after],
            "flops_ratio": report.flops_after / report.flops_before,
            "dense_ms": t_dense, "compact_ms": t_small, "time_ratio": t_small / t_dense,
            "speedup": t_dense / t_small, "max_abs_output_diff": diff,
        })
    return rows


def table(rows: list[dict], threads: int, runs: int) -> str:
    head = ("model", "dead", "batch", "neurons", "params", "FLOPs ratio", "dense ms",
            "compact ms", "time ratio", "speed-up")
    body = [(r["model"], f"{r['dead_share']:.0%}", str(r["batch"]),
             f"{r['neurons'][0]:,} -> {r['neurons'][1]:,}",
             f"{r['params'][0]:,} -> {r['params'][1]:,}", f"{r['flops_ratio']:.3f}",
             f"{r['dense_ms']:.3f}", f"{r['compact_ms']:.3f}", f"{r['time_ratio']:.3f}",
             f"{r['speedup']:.2f}x") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [f"CPU latency, median of {runs} interleaved runs, torch {torch.__version__}, "
             f"{threads} thread(s); ratios are compact / dense",
             fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    return "\n".join(lines + [fmt.format(*b) for b in body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_small"])
    parser.add_argument("--shares", nargs="+", type=float, default=[0.5, 0.9])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model (>= 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, for steady numbers)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 30:
        parser.error("--runs must be at least 30")
    torch.set_num_threads(args.threads)
    rows = [r for name in args.models for share in args.shares
            for r in measure(name, share, args.batches, args.runs, args.warmup)]
    if args.json:
        print(json.dumps({"threads": args.threads, "runs": args.runs, "warmup": args.warmup,
                          "torch": torch.__version__, "rows": rows}, indent=2))
    else:
        print(table(rows, args.threads, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
