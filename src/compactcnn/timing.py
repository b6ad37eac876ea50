"""Measured CPU latency: FLOPs say what a removal should save, the clock says what it did."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from compactcnn.accounting import example_input
from compactcnn.evalmode import eval_mode


def latency_ms(model: nn.Module, input_shape: tuple[int, int, int], batch: int = 1,
               repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one eval-mode forward pass, in milliseconds."""
    x = example_input(input_shape, batch)
    times = []
    with eval_mode(model), torch.inference_mode():
        for k in range(warmup + repeats):
            start = time.perf_counter()
            model(x)
            if k >= warmup:
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
