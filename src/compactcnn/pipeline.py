"""data -> train -> compact -> fine-tune -> report: what ``compactcnn train`` runs.

The run folder ends up holding the sparse model as trained (``sparse.safetensors``), the
compact model (``model.safetensors``), the last checkpoint, report.json, report.md and plots.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from compactcnn import distributed, io, report
from compactcnn.compaction import compact
from compactcnn.errors import CompactCNNError
from compactcnn.timing import latency_ms
from compactcnn.training import (
    CHECKPOINT,
    TrainConfig,
    build,
    evaluate,
    finetune,
    resume,
    train,
)


def run_file(run_dir: Path, name: str) -> Path:
    """A file of a run folder, refused if a link makes it point outside the folder."""
    path = run_dir / name
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise CompactCNNError(f"{path} points outside its run folder; refusing to follow it")
    return path


def prepare_run_dir(out: Path, resuming: bool) -> None:
    """Refuse to overwrite a finished or started run unless resuming it."""
    if resuming:
        if not (out / CHECKPOINT).is_file():
            raise CompactCNNError(f"--resume: no checkpoint in {out}")
        return
    if (out / CHECKPOINT).exists() or (out / report.REPORT).exists():
        raise CompactCNNError(f"{out} already holds a run; pass --resume or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompactCNNError(f"cannot write --out {out}: {e.strerror}") from None
    probe = out / ".write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CompactCNNError(f"cannot write --out {out}: {e.strerror}") from None


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
    io.save(sparse, out / "sparse.safetensors")
    shape = splits.input_shape
    small, outcome = compact(sparse, splits.test[:2][0])
    _, acc_sparse = evaluate(sparse, splits.test)
    ft_history = finetune(small.to(device), splits, cfg)
    small = small.cpu().eval()
    _, acc = evaluate(small, splits.test)
    io.save(small, out / "model.safetensors")
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
