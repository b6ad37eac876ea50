"""Deployment formats for a compact model, by name: each exporter writes a file and returns what
it verified: at least ``max_abs_diff``, the largest difference between what the file computes
and what PyTorch computes, plus whatever else the format has to say (the ONNX exporter used)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

Exporter = Callable[[nn.Module, tuple[int, int, int], Path], dict[str, Any]]


def _onnx(model: nn.Module, shape: tuple[int, int, int], path: Path) -> dict[str, Any]:
    from compactcnn.deploy.onnx import export_onnx  # onnxruntime is an optional extra

    return asdict(export_onnx(model, shape, path))


def _torchscript(model: nn.Module, shape: tuple[int, int, int], path: Path) -> dict[str, Any]:
    from compactcnn.deploy.torchscript import to_torchscript

    return {"max_abs_diff": to_torchscript(model, shape, path)}


EXPORTERS: dict[str, Exporter] = {"onnx": _onnx, "torchscript": _torchscript}
