"""Floating-point operations of a forward pass, from torch's own flop counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compactcnn.evalmode import eval_mode
from compactcnn.inputs import Example, as_input


def flops(model: nn.Module, example: Example) -> int:
    """Floating-point operations of one forward pass at batch 1 (a multiply-add counts 2)."""
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(as_input(model, example)[:1])
    return int(counter.get_total_flops())
