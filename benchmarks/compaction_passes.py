"""What compaction costs, in forward passes of the model it compacts.

Deep torchvision networks (no weights; random norm statistics) get 30% of every group's
neurons killed, then are compacted. Passes are counted by a pre-hook on the model's root
module, which compaction's working copy inherits, so everything it runs counts (tracing,
accounting, checks). Seconds are also given as a ratio to one forward pass of the batch
compaction checks with (the example plus four fixed inputs).

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/compaction_passes.py \\
        [--models resnet50 resnet152 densenet121] [--side 64]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from compactcnn.surgery import compact
from torchvision_zoo import build, kill, randomize_norms, relative_diff


def one_pass_seconds(model: torch.nn.Module, x: torch.Tensor, repeat: int = 3) -> float:
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeat):
            model(x)
    return (time.perf_counter() - start) / repeat


def measure(name: str, side: int, share: float = 0.3) -> dict:
    torch.manual_seed(0)
    model = build(name)
    randomize_norms(model)
    example = torch.randn(2, 3, side, side)
    kill(model, example, share)
    passes = [0]
    handle = model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    start = time.perf_counter()
    small, _ = compact(model, example)
    seconds = time.perf_counter() - start
    handle.remove()
    small._forward_pre_hooks.pop(handle.id, None)  # the copy inherited the counter
    per_pass = one_pass_seconds(model.eval(), torch.randn(6, 3, side, side))
    return {"model": name, "passes": passes[0], "seconds": seconds,
            "time_ratio": seconds / per_pass, "diff": relative_diff(model, small.eval(), side)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=["resnet50", "resnet152", "densenet121"])
    p.add_argument("--side", type=int, default=64)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    print("| model | forward passes | seconds | seconds / one forward pass | max rel. diff |")
    print("|---|---|---|---|---|")
    for name in args.models:
        r = measure(name, args.side)
        print(f"| {name} | {r['passes']} | {r['seconds']:.1f} | {r['time_ratio']:.0f} | "
              f"{r['diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
