"""Median training-step time of ProximalOptimizer(SGD, GroupLasso) against the bare SGD.

A step is zero_grad + forward + backward + optimizer.step() on one synthetic batch. The two
optimizers take their steps alternately (and in alternating order), each on its own copy of
the model, so CPU frequency changes and other load hit both alike; medians shrug off the
occasional preempted step. The goal is a ratio <= 1.05.

    PYTHONPATH=src .venv/bin/python benchmarks/prox_step.py [--steps 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from compactcnn.models import create
from compactcnn.sparsity import GroupLasso, ProximalOptimizer, neuron_groups

MODELS = {"lenet5": (1, 28, 28), "vgg_small": (1, 28, 28)}


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
              y: torch.Tensor) -> Callable[[], tuple[float, float]]:
    """One training step; returns its total time and the time of ``opt.step()`` alone."""
    def step() -> tuple[float, float]:
        start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        before_step = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        return end - start, end - before_step
    return step


def bench(name: str, batch: int, steps: int, warmup: int, lam: float) -> dict[str, float | str]:
    shape = MODELS[name]
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    runs = {}
    for kind in ("sgd", "prox"):
        torch.manual_seed(0)
        model = create(name)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if kind == "prox":
            groups = neuron_groups(model, x[:1])
            opt = ProximalOptimizer(opt, groups, GroupLasso(lam))
            prox_opt = opt
        runs[kind] = make_step(model, opt, x, y)
    times: dict[str, list[tuple[float, float]]] = {"sgd": [], "prox": []}
    for k in range(warmup + steps):
        order = ("sgd", "prox") if k % 2 == 0 else ("prox", "sgd")
        for kind in order:
            measured = runs[kind]()
            if k >= warmup:
                times[kind].append(measured)
    med = {kind: [statistics.median(t[i] for t in times[kind]) * 1e3 for i in (0, 1)]
           for kind in times}
    return {
        "model": name, "batch": batch, "steps": steps, "lam": lam,
        "sgd_step_ms": med["sgd"][0], "prox_step_ms": med["prox"][0],
        "ratio": med["prox"][0] / med["sgd"][0],
        "sgd_opt_step_ms": med["sgd"][1], "prox_opt_step_ms": med["prox"][1],
        # the prox step's own cost, free of the forward/backward noise in the ratio
        "overhead": (med["prox"][1] - med["sgd"][1]) / med["sgd"][0],
        "live_fraction": prox_opt.live_fraction(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per optimizer")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per optimizer")
    parser.add_argument("--lam", type=float, default=0.05,
                        help="group-lasso weight; the default kills some neurons within the run")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = [bench(name, args.batch, args.steps, args.warmup, args.lam)
               for name in args.models]
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2))
        return
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.steps} "
          "steps; opt.step = the optimizer's share of the step, overhead = the difference "
          "of the opt.step medians over the SGD step")
    print(f"{'model':10} {'SGD ms':>9} {'prox ms':>9} {'ratio':>7} {'SGD opt.step':>13} "
          f"{'prox opt.step':>14} {'overhead':>9} {'live':>6}")
    for r in results:
        print(f"{r['model']:10} {r['sgd_step_ms']:9.2f} {r['prox_step_ms']:9.2f} "
              f"{r['ratio']:7.3f} {r['sgd_opt_step_ms']:13.2f} {r['prox_opt_step_ms']:14.2f} "
              f"{r['overhead']:9.1%} {r['live_fraction']:6.2f}")


if __name__ == "__main__":
    main()
