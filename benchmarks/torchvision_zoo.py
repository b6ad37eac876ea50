"""Compaction on torchvision's whole classification zoo: no crash, exact outputs, and how much
each model shrank.

Every model is built without weights, its norms get random running statistics and affine
parameters, and a share of every group's neurons is killed at random the way the proximal
optimizer leaves them (weight rows, biases, and the following norms' scale and shift). It is
then compacted, and the compact model is compared with the sparse one on fresh inputs.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/torchvision_zoo.py \\
        [--models NAME ...] [--share 0.3] [--timeout 600] [--again] \\
        [--out benchmarks/results/torchvision_zoo.md]

Each model runs in a process of its own, stopped after ``--timeout`` seconds (a 224x224 vision
transformer on 2 cores can take many minutes; one slow model must not stall the sweep), and a
sweep picks up where the last one stopped: models already in the table are kept, not rerun,
unless ``--again``.

torchvision's wheel here is built against CUDA torch: its compiled operators (detection's nms)
cannot load beside the CPU build of torch, which only its import needs. The models need none
of them, so :func:`load_torchvision` declares the two operators' schemas before importing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from compactcnn.sparsity import neuron_groups
from compactcnn.surgery import compact
from compactcnn.surgery.outcome import (
    KEPT_ACROSS,
    KEPT_CONSTANT,
    KEPT_COUPLED,
    KEPT_GROUPED,
    KEPT_LAST,
    KEPT_OUTPUT,
    KEPT_TIED,
    KEPT_VARYING,
)

SHORT = {KEPT_ACROSS: "across", KEPT_CONSTANT: "constant", KEPT_COUPLED: "coupled",
         KEPT_GROUPED: "grouped", KEPT_LAST: "last", KEPT_OUTPUT: "output", KEPT_TIED: "tied",
         KEPT_VARYING: "varying"}
# Models with a fixed or a larger smallest input; the rest run at 64x64.
SIDES = {"inception_v3": 96, "maxvit_t": 224, "vit_b_16": 224, "vit_b_32": 224,
         "vit_h_14": 224, "vit_l_16": 224, "vit_l_32": 224}


def load_torchvision():
    """torchvision, importable beside the CPU build of torch (see the module docstring)."""
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}",
                                 "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:  # already defined: by torchvision's own library, or by us
            pass
    import torchvision

    return torchvision


def build(name: str) -> nn.Module:
    tv = load_torchvision()
    kwargs = {"aux_logits": False, "init_weights": True} \
        if name in ("googlenet", "inception_v3") else {}
    return tv.models.get_model(name, weights=None, **kwargs).eval()


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from their initial 0/1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) \
                and getattr(m, "weight", None) is not None:
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))


def kill(model: nn.Module, example: torch.Tensor, share: float, seed: int = 0) -> int:
    """Zero ``share`` of every group's neurons at random, all of each one's scalars."""
    g = torch.Generator().manual_seed(seed)
    killed = 0
    for group in neuron_groups(model, example):
        dead = torch.rand(group.size, generator=g) < share
        matrix = group.matrix()
        matrix[dead] = 0.0
        group.write(matrix)
        killed += int(dead.sum())
    return killed


def relative_diff(a: nn.Module, b: nn.Module, side: int, seed: int = 123) -> float:
    """max |a(x) - b(x)| on fresh inputs, relative to the output scale when above 1."""
    x = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return (ya - yb).abs().max().item() / max(1.0, ya.abs().max().item())


def compacted(name: str, share: float = 0.3, seed: int = 0, side: int | None = None):
    """``(sparse model, compact model, report, killed, side, seconds)`` for one zoo model."""
    side = side or SIDES.get(name, 64)
    torch.manual_seed(seed)
    model = build(name)
    randomize_norms(model, seed)
    example = torch.randn(2, 3, side, side)
    killed = kill(model, example, share, seed)
    start = time.perf_counter()
    small, report = compact(model, example)
    return model, small.eval(), report, killed, side, time.perf_counter() - start


def run(name: str, share: float = 0.3, seed: int = 0) -> dict:
    """Kill, compact, compare: one row of the table."""
    model, small, report, killed, side, seconds = compacted(name, share, seed)
    kept = {SHORT[r]: n for r, n in sorted(report.kept.items()) if n}
    return {"model": name, "side": side, "params": (report.before.total_params,
                                                    report.after.total_params),
            "neurons": (report.before.neurons, report.after.neurons), "killed": killed,
            "removed": sum(g.removed for g in report.groups), "kept": kept,
            "diff": relative_diff(model, small, side), "passes": report.forward_passes,
            "seconds": seconds}


HEADER = ("| model | input | parameters | neurons | killed | removed | kept (why) | "
          "max rel. diff | passes | seconds |\n|---|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    (p0, p1), (n0, n1) = r["params"], r["neurons"]
    kept = ", ".join(f"{k} {n}" for k, n in r["kept"].items()) or "-"
    return (f"| {r['model']} | {r['side']} | {p0:,} -> {p1:,} ({p1 / p0:.1%}) | "
            f"{n0:,} -> {n1:,} | {r['killed']:,} | {r['removed']:,} | {kept} | "
            f"{r['diff']:.1e} | {r['passes']} | {r['seconds']:.1f} |")


def _child(name: str, share: float, results: multiprocessing.Queue) -> None:
    warnings.filterwarnings("ignore")  # torch-pruning warns about unwrapped parameters
    try:
        results.put(row(run(name, share)))
    except Exception as e:  # noqa: BLE001  the sweep reports every failure and goes on
        results.put(f"| {name} | FAILED: {type(e).__name__}: {str(e)[:120]} |")


def timed_row(name: str, share: float, timeout: float) -> str:
    """The model's row, from a process of its own that is stopped after ``timeout`` seconds."""
    results = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(target=_child,
                                                         args=(name, share, results))
    child.start()
    try:
        return results.get(timeout=timeout)
    except queue.Empty:
        return f"| {name} | TIMEOUT: not done in {timeout:.0f} s |"
    finally:
        child.kill()
        child.join()


def rows(path: Path) -> dict[str, str]:
    """Every model's row in an earlier sweep's table, by model name."""
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines()[2:] if line.startswith("| ")]
    return {line.split(" | ")[0][2:]: line for line in lines}


def finished(path: Path) -> dict[str, str]:
    """Rows of an earlier sweep that completed (failures and timeouts are run again)."""
    return {k: v for k, v in rows(path).items() if "FAILED" not in v and "TIMEOUT" not in v}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", help="default: every classification model")
    p.add_argument("--share", type=float, default=0.3)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    p.add_argument("--again", action="store_true", help="rerun models already in --out")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/torchvision_zoo.md"))
    args = p.parse_args(argv)
    tv = load_torchvision()
    names = args.models or tv.models.list_models(module=tv.models)
    table = rows(args.out)  # a sweep of some models keeps the other models' rows
    done = {} if args.again else finished(args.out)
    failures = 0
    print(HEADER, flush=True)
    for name in names:
        line = done.get(name) or timed_row(name, args.share, args.timeout)
        failures += "FAILED" in line or "TIMEOUT" in line
        print(line, flush=True)
        table[name] = line
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # after every model, so that a long sweep shows its progress
        args.out.write_text("\n".join([HEADER, *(table[k] for k in sorted(table))]) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
