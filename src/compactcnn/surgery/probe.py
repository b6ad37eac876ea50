"""What a dead neuron delivers where it is consumed: zeros, a foldable constant, or something
that keeps it.

One forward pass records, for every input column of every consumer (a channel of a
convolution, a feature of a linear layer), whether it is constant over the probe batch and
every position, and its value. Each group then reads its neurons' columns from that record,
so looking costs one pass for the whole model, not one per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from compactcnn.layers import channel_dim, kind_of
from compactcnn.sparsity.tp_adapter import removes_inputs, root_rows
from compactcnn.surgery.outcome import KEPT_CONSTANT, KEPT_TIED, KEPT_VARYING


@dataclass
class Columns:
    """Per input column of one consumer: constant everywhere it was seen, and its value."""

    constant: Tensor
    value: Tensor

    def merge(self, other: Columns) -> Columns:  # a module called more than once
        same = self.constant & other.constant & (self.value == other.value)
        return Columns(same, self.value)


def _columns(module: nn.Module, x: Tensor) -> Columns:
    x = x.detach().movedim(channel_dim(module), 0)
    x = x.reshape(x.shape[0], -1)
    return Columns((x == x[:, :1]).all(dim=1), x[:, 0].clone())


def record_columns(work: nn.Module, consumers: set[nn.Module], probe: Tensor
                   ) -> dict[nn.Module, Columns]:
    """One forward pass: every consumer's input columns."""
    seen: dict[nn.Module, Columns] = {}

    def hook(m: nn.Module, inputs) -> None:
        cols = _columns(m, inputs[0])
        seen[m] = seen[m].merge(cols) if m in seen else cols

    handles = [m.register_forward_pre_hook(hook) for m in consumers]
    try:
        with torch.no_grad():
            work(probe)
    finally:
        for h in handles:
            h.remove()
    return seen


def consumer_columns(item, neurons: Tensor) -> Tensor:
    """``[neurons, per neuron]``: the consumer's input columns of each of the root
    ``neurons`` (ascending), in order.

    The order (by column) survives other groups' removals, which only shift columns, so
    values stored against it now still line up when the removal is made later.
    """
    roots, cols = root_rows(item)
    order = torch.argsort(roots * (int(cols.max()) + 1 if cols.numel() else 1) + cols)
    roots, cols = roots[order], cols[order]
    n = neurons.numel()
    if cols.numel() % n or not torch.equal(roots, neurons.repeat_interleave(cols.numel() // n)):
        raise ValueError("uneven consumer mapping")
    return cols.reshape(n, -1)


@dataclass
class Delivery:
    """What the group's dead neurons deliver: per consumer the constants to fold (``[size,
    per]``, 0 where nothing is folded), and per neuron the reason it stays ("" if it may go)."""

    folds: dict[nn.Module, Tensor] = field(default_factory=dict)
    fate: list[str] = field(default_factory=list)


def deliveries(group, dead: Tensor, seen: dict[nn.Module, Columns]) -> Delivery:
    size = dead.numel()
    out = Delivery(fate=[""] * size)
    for item in group:
        m = item.dep.target.module
        if not removes_inputs(item.dep):
            continue
        try:
            cols = consumer_columns(item, torch.arange(size))
            constant = seen[m].constant[cols].all(dim=1)
            values = seen[m].value[cols]
        except (ValueError, IndexError, KeyError):  # not seen, or mapped past its inputs
            _keep(out.fate, dead, KEPT_TIED)
            continue
        zero = constant & (values == 0).all(dim=1)
        foldable = kind_of(m).foldable(m)
        _keep(out.fate, dead & ~constant, KEPT_VARYING)
        if not foldable:
            _keep(out.fate, dead & constant & ~zero, KEPT_CONSTANT)
        elif bool((constant & ~zero & dead).any()):
            out.folds[m] = torch.where((constant & dead)[:, None], values, 0.0)
    return out


def _keep(fate: list[str], which: Tensor, reason: str) -> None:
    """Give each neuron in ``which`` that has no reason yet this one (the first cause wins)."""
    for k in which.nonzero().flatten().tolist():
        fate[k] = fate[k] or reason
