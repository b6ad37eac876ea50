"""The run folder's layout: one place that names its files and guards them."""

from __future__ import annotations

from pathlib import Path

from compactcnn.errors import CompactCNNError

CHECKPOINT = "checkpoint.safetensors"  # the training loop's state, rewritten every epoch
SPARSE = "sparse.safetensors"  # the model as trained, dead neurons still in place
MODEL = "model.safetensors"  # the compact model (fine-tuned when asked)
REPORT = "report.json"
REPORT_MD = "report.md"
PLOTS = ("neurons.png", "live.png", "curves.png")


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
            raise CompactCNNError(f"resume: no checkpoint in {out}")
        return
    if (out / CHECKPOINT).exists() or (out / REPORT).exists():
        raise CompactCNNError(f"{out} already holds a run; pass --resume or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except ValueError as e:  # a NUL byte in the path
        raise CompactCNNError(f"cannot write --out {out!r}: {e}") from None
    except OSError as e:
        raise CompactCNNError(f"cannot write --out {out}: {e.strerror}") from None
    probe = out / ".write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CompactCNNError(f"cannot write --out {out}: {e.strerror}") from None

