"""Deployment formats for a compact model, by name: each exporter writes a file and returns the
largest difference between what the file computes and what PyTorch computes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

Exporter = Callable[[nn.Module, tuple[int, int, int], Path], float]


def _onnx(model: nn.Module, shape: tuple[int, int, int], path: Path) -> float:
    from compactcnn.deploy.onnx import to_onnx  # onnxruntime is an optional extra

    return to_onnx(model, shape, path)


def _torchscript(model: nn.Module, shape: tuple[int, int, int], path: Path) -> float:
    from compactcnn.deploy.torchscript import to_torchscript

    return to_torchscript(model, shape, path)


EXPORTERS: dict[str, Exporter] = {"onnx": _onnx, "torchscript": _torchscript}
