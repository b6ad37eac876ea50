"""Choosing the device a run trains on."""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.errors import CompactCNNError


def pick_device(name: str = "cpu") -> torch.device:
    """``auto`` takes CUDA when there is one; asking for CUDA without one is bad input."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CompactCNNError(f"--device {name}: this machine has no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CompactCNNError(f"unknown --device '{name}'; use cpu, cuda or auto") from None


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
