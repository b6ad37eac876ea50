"""data -> train -> compact -> fine-tune -> report: what ``compactcnn train`` runs.

Without a target the run trains with the penalty at the lam it was given, compacts, and
optionally fine-tunes. With a target (``--target params=0.10``) it trains towards the budget
for the first part of the epochs with the chosen method, selects and compacts, and trains the
compact network for the rest, on the same schedule (see ``budgeted.py``).

The run folder ends up holding the sparse model as trained (``sparse.safetensors``), the
compact model (``model.safetensors``), the last checkpoint, report.json, report.md and plots.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from compactcnn.accounting.accuracy import evaluate
from compactcnn.accounting.latency import latency_ms
from compactcnn.files import modelfile
from compactcnn.run import distributed, report
from compactcnn.run.budgeted import prune_epochs, reached, select_and_compact
from compactcnn.run.config import TrainConfig
from compactcnn.run.loop import finetune, train, train_compact
from compactcnn.run.rundir import CHECKPOINT, MODEL, SPARSE, prepare_run_dir
from compactcnn.run.session import Session, build, resume
from compactcnn.sparsity.penalties import LOW_RANK
from compactcnn.surgery.compaction import compact
from compactcnn.surgery.factorise import factorise

EXACTNESS = ("max |output(compact) - output(sparse)|: the sparse model (sparse.safetensors) "
             "against its compaction, before the compact model trained on")


def run(cfg: TrainConfig, out: Path, resuming: bool = False,
        device: torch.device | str = "cpu", workers: int = 0) -> dict[str, Any] | None:
    """Train on ``device``; compaction and the report's figures run on the CPU.

    Under torchrun every rank trains the sparse phase and rank 0 alone goes on to compact,
    train the compact network and report; the other ranks return None.
    """
    world, device = distributed.init(torch.device(device))
    try:
        if world.is_main:
            prepare_run_dir(out, resuming)
        if world.active:
            torch.distributed.barrier()
        session = (resume(cfg, out / CHECKPOINT, device, world) if resuming
                   else build(cfg, device, world))
        session.workers = workers
        train(session, out, until=prune_epochs(cfg) if cfg.budget else None)
    finally:
        distributed.shutdown(world)
    if not world.is_main:
        return None
    return _finish(session, out, torch.device(device))


def _machine(device: torch.device) -> dict[str, str]:
    """What a rerun must share to give this report's figures to the digit: torch builds and
    CPU instruction sets round floats differently, and a few ulps early on move a whole
    trajectory (lenet5 at 10%: 91.36% on one CPU, 91.29% on another, same command)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": name}


def _finish(session: Session, out: Path, device: torch.device) -> dict[str, Any]:
    cfg, splits = session.cfg, session.splits
    selection = None
    if session.ctx is not None:
        sparse, small, outcome, selection = select_and_compact(session.ctx, cfg)
    else:
        sparse = session.model.cpu().eval()
        small, outcome = compact(sparse, splits.test[:2][0])
    summary = outcome.as_dict()
    if cfg.reg in LOW_RANK:  # the survivors' exactly-zero singular values become thin layers
        small, factorisation = factorise(small, splits.test[:2][0])
        summary["compact"] = factorisation.as_dict()["after"]
        summary["factorisation"] = {k: v for k, v in factorisation.as_dict().items()
                                    if k in ("layers", "max_abs_output_diff")}
    modelfile.save(sparse, out / SPARSE)
    _, acc_sparse = evaluate(sparse, splits.test)
    history = list(session.history)
    if session.ctx is not None:
        widths = {g["name"]: g["neurons_after"] for g in outcome.as_dict()["layers"]}
        first = prune_epochs(cfg)
        for h in train_compact(small.to(device), splits, cfg, first,
                               restart=first == 0 or cfg.compact_lr == "restart"):
            history.append(h | {"live": widths})
    ft_history = finetune(small.to(device), splits, cfg)
    small = small.cpu().eval()
    _, acc = evaluate(small, splits.test)
    modelfile.save(small, out / MODEL)
    summary["max_abs_output_diff_compares"] = EXACTNESS
    shape = splits.input_shape
    for side, model in (("dense", sparse), ("compact", small)):
        summary[side]["latency_ms"] = latency_ms(model, shape)
    result = asdict(cfg) | {  # the configuration as given, then results under keys of their own
        "accuracy": acc, "accuracy_before_finetune": acc_sparse,
        "input_shape": list(shape), "train_seconds": sum(h["seconds"] for h in history),
        "history": history, "finetune_history": ft_history, "machine": _machine(device),
    } | summary
    if session.ctx is not None:
        result["budget"] = {"target": cfg.target, "reached": reached(session.ctx, small)}
    if selection is not None:
        result["selection"] = selection
    report.write(result, out)
    return result
