"""Run a model in eval mode for a moment, then give it back in the mode it was in.

Tracing, counting, timing and evaluating all need eval mode (dropout off, BatchNorm on its
running statistics) without changing what the caller holds, even when they fail midway.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
