"""data -> train -> compact -> fine-tune -> report: what ``compactcnn train`` runs.

The run folder ends up holding the sparse model as trained (``sparse.safetensors``), the
compact model (``model.safetensors``), the last checkpoint, report.json, report.md and plots.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from compactcnn.accounting.latency import latency_ms
from compactcnn.files import modelfile
from compactcnn.run import distributed, report
from compactcnn.run.config import TrainConfig
from compactcnn.run.loop import evaluate, finetune, train
from compactcnn.run.rundir import CHECKPOINT, MODEL, SPARSE, prepare_run_dir
from compactcnn.run.session import build, resume
from compactcnn.surgery.compaction import compact


def run(cfg: TrainConfig, out: Path, resuming: bool = False,
        device: torch.device | str = "cpu", workers: int = 0) -> dict[str, Any] | None:
    """Train and fine-tune on ``device``; compaction and the report's figures run on the CPU.

    Under torchrun every rank trains and rank 0 alone goes on to compact and report; the
    other ranks return None.
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
        train(session, out)
    finally:
        distributed.shutdown(world)
    if not world.is_main:
        return None
    splits, sparse = session.splits, session.model.cpu().eval()
    modelfile.save(sparse, out / SPARSE)
    shape = splits.input_shape
    small, outcome = compact(sparse, splits.test[:2][0])
    _, acc_sparse = evaluate(sparse, splits.test)
    ft_history = finetune(small.to(device), splits, cfg)
    small = small.cpu().eval()
    _, acc = evaluate(small, splits.test)
    modelfile.save(small, out / MODEL)
    summary = outcome.as_dict()
    for side, model in (("dense", sparse), ("compact", small)):
        summary[side]["latency_ms"] = latency_ms(model, shape)
    result = asdict(cfg) | {
        "accuracy": acc, "accuracy_before_finetune": acc_sparse,
        "input": list(shape), "train_seconds": sum(h["seconds"] for h in session.history),
        "history": session.history, "finetune_history": ft_history,
    } | summary
    report.write(result, out)
    return result
