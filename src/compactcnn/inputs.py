"""One way to give an example input, the same for every API: a tensor, or a (C, H, W) shape.

Tracing only needs shapes; exactness checks need varied values. So every function that runs a
model to learn about it (groups, compaction, the neuron table, FLOPs, latency, export) takes an
``Example``: a batch tensor is used as it is, a shape becomes a fixed random batch from a seeded
generator, on the model's device (so that a model on the ``meta`` device is traced without
allocating anything).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactcnn.errors import CompactCNNError

Example = Tensor | tuple[int, ...]


def example_input(input_shape: tuple[int, ...], batch: int = 1, seed: int = 0) -> Tensor:
    """A fixed random batch of ``input_shape`` samples (standard normal, like normalised data)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_shape, generator=g)


def as_input(model: nn.Module, example: Example, batch: int = 1, seed: int = 0) -> Tensor:
    """The tensor to run ``model`` on: ``example`` itself, or a fixed batch of that shape on
    the model's device."""
    if isinstance(example, Tensor):
        return example
    shape = tuple(example)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise CompactCNNError(f"an example input is a tensor or a shape of positive integers, "
                              f"got {example!r}")
    device = next((t.device for t in (*model.parameters(), *model.buffers())), None)
    if device is not None and device.type == "meta":  # shapes only: nothing to draw or hold
        return torch.empty(batch, *shape, device=device)
    x = example_input(shape, batch, seed)
    return x if device is None else x.to(device)


def shape_of(example: Example) -> tuple[int, ...]:
    """The per-sample shape (C, H, W) of an example."""
    return tuple(example.shape[1:]) if isinstance(example, Tensor) else tuple(example)
