"""Test accuracy: the figure every compact model is judged by, measured the same way for all."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from compactcnn.data.loaders import make_loader
from compactcnn.evalmode import eval_mode


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode."""
    device = next(model.parameters()).device
    loss, correct, seen = 0.0, 0, 0
    with eval_mode(model), torch.no_grad():
        for x, y in make_loader(dataset, batch_size, shuffle=False, seed=0):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
    return loss / max(seen, 1), correct / max(seen, 1)
