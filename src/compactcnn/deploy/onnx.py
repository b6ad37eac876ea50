"""Export to ONNX, verified against ONNX Runtime before anything is written.

Which exporter: the torch.export-based one (``torch.onnx.export(..., dynamo=True)``), the
default since PyTorch 2.9, which calls the TorchScript-based one legacy and deprecated. It
captures the model with ``torch.export``, which refuses what it cannot represent (an ``if`` on
a tensor's value) where a trace silently records the one path the example took. The
TorchScript-based exporter is kept as a fallback for a model the new one cannot capture or
whose export misses the tolerance, and is used only if its own file verifies; which exporter
wrote the file is returned (:class:`OnnxExport`), as the fallback goes when PyTorch removes
the old exporter.

Verification: the file is run by ONNX Runtime on the example batch and on a second random batch
of another size (the batch axis is dynamic, so a graph that baked the example's batch size in
fails here rather than in deployment), and compared with the PyTorch model. A file whose max
absolute difference exceeds the tolerance is never written, and a file already at the
destination is left as it was: the bytes are checked in memory and then written atomically
(:func:`compactcnn.files.atomic.atomic_write`).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor, nn

from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
from compactcnn.files.atomic import atomic_write
from compactcnn.files.modelfile import first_line
from compactcnn.inputs import Example, as_input, shape_of

INPUT, OUTPUT = "input", "logits"
DYNAMO, TORCHSCRIPT = "dynamo", "torchscript"
DEFAULT_TOLERANCE = 1e-4
# The lowest opset the torch.export-based exporter implements: asked for less, it exports at 18
# and converts down, which fails on some graphs (a ResNet's ReduceMean) and logs a traceback.
DEFAULT_OPSET = 18


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote: which exporter produced the file (:data:`DYNAMO` or
    :data:`TORCHSCRIPT`), its max |onnxruntime - torch| over both verification batches, the
    tolerance it met, and why the exporters tried before it were passed over ('' if none was)."""

    exporter: str
    max_abs_diff: float
    tolerance: float
    passed_over: str


def _requirements() -> ModuleType:
    """onnxruntime, imported late, after checking for onnxscript (the torch.export-based
    exporter's dependency): both come with the optional extra, whose absence is the user's to
    fix and so is reported like bad input."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError:
        raise CompactCNNError("ONNX export needs the extra: pip install 'compactcnn[onnx]'"
                              ) from None
    return onnxruntime


def _export_dynamo(model: nn.Module, x: Tensor, opset: int) -> bytes:
    # When it fails, torch.export prints the partial graph to stderr: the reason is kept from
    # the exception instead (OnnxExport.passed_over, or the error), and whatever a successful
    # export prints is passed on. torch.export's internals also raise a FutureWarning about
    # pytree's LeafSpec on every export (torch 2.13): nothing a caller can act on.
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(printed):
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)
        program = torch.onnx.export(
            model, (x,), None, dynamo=True, verbose=False, opset_version=opset,
            input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},))
    sys.stderr.write(printed.getvalue())
    return program.model_proto.SerializeToString()


def _export_torchscript(model: nn.Module, x: Tensor, opset: int) -> bytes:
    buffer = io.BytesIO()
    # Used only where the current exporter failed: its deprecation notices say nothing then
    # that the returned OnnxExport does not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return buffer.getvalue()


ONNX_EXPORTERS: dict[str, Callable[[nn.Module, Tensor, int], bytes]] = {
    DYNAMO: _export_dynamo, TORCHSCRIPT: _export_torchscript}
"""The exporters in the order they are tried."""


def _max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want|, infinite where the shapes differ or only one side is NaN or infinite
    (a plain max would make a NaN difference compare as within any tolerance)."""
    if got.shape != want.shape:
        return float("inf")
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    diff = np.where(same, 0.0, np.abs(got.astype(np.float64) - want.astype(np.float64)))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def _reason(e: BaseException) -> str:
    """One line saying why an export failed: the cause that torch.onnx's multi-line errors
    give under their "Exception summary" heading, else the first line; colour codes dropped."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [line.strip() for line in (text.partition("## Exception summary")[2] or text)
             .splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _reference(model: nn.Module, x: Tensor, note: str = "") -> np.ndarray:
    """PyTorch's output for ``x``, which the export must reproduce. Any exception counts as the
    model refusing ``x`` (``note`` says why it must not), not only torch's shape errors: the
    forward pass may be the user's code."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise CompactCNNError(f"the model fails on input {list(x.shape)}: {first_line(e)}{note}"
                              ) from None
    if not isinstance(out, Tensor):
        raise CompactCNNError(f"ONNX export takes a model that returns one tensor, not a "
                              f"{type(out).__name__}")
    return out.detach().cpu().numpy()


def export_onnx(model: nn.Module, example: Example, path: str | Path,
                tolerance: float = DEFAULT_TOLERANCE, opset: int = DEFAULT_OPSET) -> OnnxExport:
    """Write an ONNX file of ``model`` (eval mode, dynamic batch axis) at ``path``, only if
    ONNX Runtime's outputs are within ``tolerance`` (max absolute difference) of PyTorch's.

    ``example`` is the batch to export and verify on (a shape: a fixed random batch of 4); a
    second random batch of 3 more samples checks that the batch axis really is dynamic.
    Raises CompactCNNError naming each exporter's difference or failure if none verifies;
    nothing is then written and a file already at ``path`` is untouched.
    """
    ort = _requirements()
    if not tolerance >= 0:
        raise CompactCNNError(f"the ONNX tolerance must be a number >= 0, got {tolerance}")
    with eval_mode(model):
        x = as_input(model, example, batch=4, seed=3)
        batches = (x, as_input(model, shape_of(x), batch=len(x) + 3, seed=4))
        wants = [_reference(model, x), _reference(
            model, batches[1], "; the ONNX file's batch axis is dynamic, so the model must take "
            "any batch size")]
        quiet = ort.SessionOptions()
        quiet.log_severity_level = 4  # fatal only: a failing run's error is reported below
        passed_over: list[str] = []
        for name, export in ONNX_EXPORTERS.items():
            try:
                data = export(model, x, opset)
            except RuntimeError as e:  # torch.onnx's errors and tracing's are RuntimeErrors
                passed_over.append(f"{name} exporter failed ({_reason(e)})")
                continue
            try:
                session = ort.InferenceSession(data, quiet, providers=["CPUExecutionProvider"])
                gots = [session.run(None, {INPUT: b.detach().cpu().numpy()})[0] for b in batches]
            except Exception as e:  # ONNX Runtime's error types derive from Exception only
                passed_over.append(f"{name} export does not run in ONNX Runtime "
                                   f"({_reason(e)})")
                continue
            diff = max(map(_max_abs_diff, gots, wants))
            if diff <= tolerance:
                atomic_write(path, data)
                return OnnxExport(name, diff, tolerance, "; ".join(passed_over))
            passed_over.append(f"{name} export differs from PyTorch by {diff:.3g} > "
                               f"tolerance {tolerance:g}")
    raise CompactCNNError(f"no ONNX export of the model verifies, {path} not written: "
                          + "; ".join(passed_over))


def to_onnx(model: nn.Module, example: Example, path: str | Path,
            tolerance: float = DEFAULT_TOLERANCE, opset: int = DEFAULT_OPSET) -> float:
    """:func:`export_onnx`, returning only max |onnxruntime - torch|: the contract every
    exporter in :data:`compactcnn.deploy.EXPORTERS` keeps."""
    return export_onnx(model, example, path, tolerance, opset).max_abs_diff
