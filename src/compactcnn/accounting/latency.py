"""Measured CPU latency: FLOPs say what a removal should save, the clock says what it did."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from compactcnn.evalmode import eval_mode
from compactcnn.inputs import Example, as_input


def latency_ms(model: nn.Module, example: Example, batch: int = 1,
               repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one eval-mode forward pass of ``batch`` samples, in milliseconds
    (a tensor example is used as it is)."""
    x = as_input(model, example, batch)
    times = []
    with eval_mode(model), torch.inference_mode():
        for k in range(warmup + repeats):
            start = time.perf_counter()
            model(x)
            if k >= warmup:
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
