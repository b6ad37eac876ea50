"""Export to ONNX, checked against ONNX Runtime before the file is written."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from compactcnn.errors import CompactCNNError
from compactcnn.files.atomic import atomic_write
from compactcnn.inputs import Example, as_input


def to_onnx(model: nn.Module, example: Example, path: str | Path,
            opset: int = 17) -> float:
    """Write an ONNX file with a dynamic batch axis; return max |onnxruntime - torch|."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CompactCNNError("ONNX export needs the extra: pip install 'compactcnn[onnx]'"
                              ) from None
    model = model.eval()
    x = as_input(model, example, batch=4, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        # The TorchScript-based exporter warns that it is legacy; it is the one that needs no
        # extra packages and handles every zoo model, so its deprecation notice is muted.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (x,), str(tmp_file), input_names=["input"],
                              output_names=["logits"], opset_version=opset, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        data = tmp_file.read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    atomic_write(path, data)
    return float(abs(got - want).max())
