"""Scoring and timing a deployed model the same way whatever runs it (torch, ONNX Runtime or the
bit-packed kernels): each is called as an ``nn.Module``, so one prediction loop and
:func:`compactcnn.accounting.latency_ms` serve them all and their figures compare."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from compactcnn.accounting.latency import latency_ms
from compactcnn.deploy.int8 import int8_session, predict_int8
from compactcnn.evalmode import eval_mode

LATENCY_BATCHES = (1, 64)


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, behind the call of an ``nn.Module``."""

    def __init__(self, onnx: str | Path | bytes) -> None:
        super().__init__()
        self.session = int8_session(onnx)

    def forward(self, x: Tensor) -> Tensor:
        return predict_int8(self.session, x)


def predictions(model: nn.Module, images: Tensor, batch: int = 512) -> Tensor:
    """The predicted class of every image, in eval mode."""
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(chunk).argmax(1) for chunk in images.split(batch)])


def accuracy(predicted: Tensor, labels: Tensor) -> float:
    return float((predicted == labels).float().mean())


def latencies(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, float]:
    """Median CPU milliseconds of one forward pass at each of :data:`LATENCY_BATCHES`."""
    return {f"batch_{b}": latency_ms(model, shape, batch=b) for b in LATENCY_BATCHES}
