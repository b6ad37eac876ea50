"""Export to TorchScript (deprecated in torch, kept for users who still deploy it)."""

from __future__ import annotations

import io as _bytes
import warnings
from pathlib import Path

import torch
from torch import nn

from compactcnn.files.atomic import atomic_write
from compactcnn.inputs import Example, as_input


def to_torchscript(model: nn.Module, example: Example, path: str | Path
                   ) -> float:
    """Write a traced TorchScript file; return max |scripted - eager| on a fresh input."""
    model = model.eval()
    x = as_input(model, example, batch=2, seed=3)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        traced = torch.jit.trace(model, x)
        diff = float((traced(x) - model(x)).abs().max())
        buffer = _bytes.BytesIO()
        torch.jit.save(traced, buffer)
    atomic_write(path, buffer.getvalue())
    return diff
