"""Static int8 quantisation through ONNX Runtime: int8 weights and activations, calibrated once.

Why ONNX Runtime and not ``torch.ao.quantization``: PyTorch has moved quantisation to torchao;
its documentation asks eager-mode users to migrate to torchao's ``quantize_`` and FX-mode users
to torchao's PT2E flow, and plans to delete ``torch.ao.quantization``. PT2E would add torchao
and ``torch.export`` as dependencies for a model that is deployed as ONNX anyway. ORT's
``quantize_static`` is maintained, needs only the ``onnx`` extra already used for export, and
quantises the very graph that will run, so the accuracy measured here is the deployed accuracy.

Choices: QDQ format (QuantizeLinear/DequantizeLinear pairs, which ORT's CPU kernels are
optimised for and other runtimes also read); per-channel weights (one scale per neuron, since
filters differ in range, more so once group-sparse training has shrunk some of them); unsigned
8-bit activations with signed 8-bit weights, as ORT's ``quantize_static`` guidance recommends for
x86 (for ARM it recommends signed activations); min/max calibration on training images.

Weights use 7 bits by default (``reduce_range=True``), as that guidance adds for x86 without
VNNI, where the u8s8 kernels sum pairs of products in int16 and saturate: on an AVX2 machine
without VNNI, a LeNet-5 whose logits reach 240 had max |int8 - float| logit 53 and 97.8% of its
predictions agreeing with full-range weights, 9.4 and 99.8% with 7 bits. A quantised file does
not know the CPU it will meet, so the default is the range that is safe on all of them; pass
``reduce_range=False`` for a target known to have VNNI (or for ARM).

The float graph that is quantised is :func:`compactcnn.deploy.onnx.export_onnx`'s, verified
against PyTorch like any ONNX export and so written by the torch.export-based exporter unless a
model needs the TorchScript-based fallback. ORT's pre-processing and ``quantize_static`` take
either exporter's graph (Conv, Gemm, pooling, Relu, Add); the exporter used is reported.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from compactcnn.deploy.onnx import INPUT, export_onnx
from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
from compactcnn.files.atomic import atomic_write

if TYPE_CHECKING:
    import onnxruntime
    import onnxruntime.quantization


def _onnxruntime() -> ModuleType:
    """onnxruntime, imported late: it is an optional extra (its absence is the user's to fix,
    so it is reported like bad input, as :func:`compactcnn.deploy.onnx.to_onnx` does)."""
    try:
        import onnxruntime
        import onnxruntime.quantization
    except ImportError:
        raise CompactCNNError("int8 quantisation needs the extra: "
                              "pip install 'compactcnn[onnx]'") from None
    return onnxruntime


def _calibration_reader(images: np.ndarray, batch: int
                        ) -> onnxruntime.quantization.CalibrationDataReader:
    """A CalibrationDataReader over ``images`` in batches; ORT asks for feeds until None."""
    quantization = _onnxruntime().quantization

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(np.array_split(images, -(-len(images) // batch)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._batches, None)
            return None if chunk is None else {INPUT: chunk}

    return Reader()


def int8_session(path: str | Path | bytes) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session for an ONNX file, quantised or float (or its bytes)."""
    ort = _onnxruntime()
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path),
                                providers=["CPUExecutionProvider"])


def predict_int8(model: str | Path | onnxruntime.InferenceSession, x: Tensor) -> Tensor:
    """Logits of the quantised model for a batch; pass a session to reuse it across batches."""
    session = int8_session(model) if isinstance(model, (str, Path)) else model
    return torch.from_numpy(session.run(None, {INPUT: x.detach().cpu().float().numpy()})[0])


def quantize_int8(model: nn.Module, calibration: Tensor, input_shape: tuple[int, int, int],
                  path: str | Path, batch: int = 32, reduce_range: bool = True
                  ) -> dict[str, float | int | str | bytes]:
    """Export ``model`` to ONNX, quantise it statically to int8, write it to ``path``.

    ``calibration`` is a batch of training images (N, *input_shape) that fixes the activation
    ranges; the same images measure the damage. Returns ``bytes`` (the int8 file), ``float_bytes``
    (the float ONNX file it came from), ``float_onnx`` (that file's bytes, dynamic in the batch:
    a caller that also wants the float model in ONNX need not export it again, which the dynamo
    exporter makes slow), ``float_exporter`` (which exporter wrote that file, see
    :class:`compactcnn.deploy.onnx.OnnxExport`) and ``max_logit_diff`` (max |int8 - float|
    logit on the calibration batch). The file is written only once everything has succeeded,
    and atomically.
    ``reduce_range`` quantises weights to 7 bits (see the module docstring for when not to).
    """
    quantization = _onnxruntime().quantization
    if tuple(calibration.shape[1:]) != tuple(input_shape) or len(calibration) == 0:
        raise ValueError(f"calibration images have shape {tuple(calibration.shape)}, "
                         f"expected (N, {', '.join(map(str, input_shape))})")
    images = calibration.detach().cpu().float()
    with tempfile.TemporaryDirectory() as tmp, eval_mode(model):
        float_file, prepared, int8_file = (Path(tmp) / f for f in ("f.onnx", "p.onnx", "q.onnx"))
        exported = export_onnx(model, images[:batch], float_file)
        # ORT's documented pre-processing: shape inference (a tensor of unknown shape is left
        # unquantised) and graph optimisation (e.g. Conv+BN folding) before calibration.
        quantization.quant_pre_process(str(float_file), str(prepared))
        quantization.quantize_static(
            str(prepared), str(int8_file), _calibration_reader(images.numpy(), batch),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, reduce_range=reduce_range)
        data = int8_file.read_bytes()
        float_onnx = float_file.read_bytes()
        with torch.no_grad():
            want = model(images)
    got = predict_int8(int8_session(data), images)
    atomic_write(path, data)
    return {"bytes": len(data), "float_bytes": len(float_onnx), "float_onnx": float_onnx,
            "float_exporter": exported.exporter,
            "max_logit_diff": float((got - want).abs().max())}
