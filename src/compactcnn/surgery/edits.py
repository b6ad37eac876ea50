"""The edits compaction makes to a model, and how to undo them.

torch-pruning does the channel surgery (through :mod:`compactcnn.sparsity.tp_adapter`);
folding a constant into a bias and keeping grouped convolutions even are ours.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactcnn.layers import kind_of
from compactcnn.sparsity.neurons import even
from compactcnn.surgery.outcome import KEPT_GROUPED, GroupOutcome


def balance(dead: Tensor, blocks: list[Tensor], outcome: GroupOutcome) -> Tensor:
    """Keep as many dead neurons as needed for every grouped convolution to stay even."""
    evened = even(dead, blocks)
    if kept := int((dead & ~evened).sum()):
        outcome.kept[KEPT_GROUPED] += kept
    return evened


def fold(consumer: nn.Module, cols: Tensor, values: Tensor) -> None:
    """Add what the removed constant inputs (``values`` on input columns ``cols``) contributed
    to the consumer's bias."""
    delta = kind_of(consumer).fold(consumer, cols, values)
    if not bool(delta.ne(0).any()):
        return
    bias = consumer.bias.detach() if consumer.bias is not None else torch.zeros_like(delta)
    consumer.bias = nn.Parameter(bias + delta)


def snapshot(m: nn.Module) -> dict:
    """What :func:`restore` needs to undo a cut. torch-pruning replaces parameters and buffers
    (so keeping the old objects is enough) but edits its concatenations' and splits' size
    lists in place, so those are copied."""
    return {"dict": {k: list(v) if isinstance(v, list) else v for k, v in m.__dict__.items()},
            "_parameters": dict(m._parameters), "_buffers": dict(m._buffers)}


def restore(m: nn.Module, state: dict) -> None:
    m.__dict__.update(state["dict"])
    m._parameters = state["_parameters"]
    m._buffers = state["_buffers"]
