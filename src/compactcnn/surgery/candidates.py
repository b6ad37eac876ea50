"""Which neurons of a torch-pruning group are dead, asked of the one test of death.

:func:`compactcnn.sparsity.neurons.dead_rows` decides: a neuron is dead when every layer that
produces it has an all-zero weight row, or every norm that normalises it has a zero scale (as
network slimming leaves it). A group's items may reach only some of its neurons (a
concatenation into an add), so each item speaks only for the neurons it reaches, and a neuron
that no norm reaches is never dead by its scales.

A zero scale makes only the norm's own output constant. So a neuron is dead by its scales only
where every layer that produces it (and is not dead by its weights) reaches its consumers
through a zero-scale norm alone: an add that joins the layer's raw output to the norm's, or a
consumer that reads it beside the norm, keeps the neuron live (see
:mod:`compactcnn.sparsity.norm_paths`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactcnn.layers import holds_neurons
from compactcnn.sparsity.neurons import dead_rows
from compactcnn.sparsity.norm_paths import has_scales, silenced_by_norms
from compactcnn.sparsity.tp_adapter import reach_mask, removes_inputs, root_rows


def _per_neuron(item, param: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """``[size, elements]`` with the sum of |rows| each neuron reaches (0 where it reaches
    none), and which neurons it reaches."""
    roots, rows = root_rows(item)
    values = param.detach().index_select(0, rows).reshape(rows.numel(), -1).abs()
    matrix = torch.zeros(size, values.shape[1], dtype=values.dtype)
    matrix.index_add_(0, roots, values)
    return matrix, reach_mask(item, size)


def dead_neurons(group, size: int) -> tuple[Tensor, Tensor]:
    """``(dead, partly)``: dead neurons, and the others that are zero in some producing layer
    or norm (alive in a coupled one, so they stay)."""
    sides: dict[str, tuple[list[Tensor], Tensor]] = {}
    partly = torch.zeros(size, dtype=torch.bool)
    producers: list[tuple[object, Tensor, Tensor]] = []  # node, reached, weight rows zero
    zero: dict[nn.Module, list[Tensor]] = {}  # norm -> neurons it reaches, of them zeroed
    for item in group:
        m = item.dep.target.module
        if not isinstance(m, nn.Module) or removes_inputs(item.dep):
            continue
        if holds_neurons(m):
            side, param = "weight", m.weight
        elif has_scales(m):
            side, param = "scale", m.weight
        else:
            continue
        try:
            matrix, reached = _per_neuron(item, param, size)
        except (IndexError, RuntimeError):  # an index past the layer: torch-pruning mis-mapped
            continue
        matrices, covered = sides.setdefault(side, ([], torch.zeros(size, dtype=torch.bool)))
        matrices.append(matrix)
        covered |= reached
        rows_zero = reached & matrix.eq(0).all(dim=1)
        partly |= rows_zero
        if side == "weight":
            producers.append((item.dep.target, reached, rows_zero))
        else:
            seen, zeroed = zero.setdefault(m, [torch.zeros(size, dtype=torch.bool),
                                               torch.ones(size, dtype=torch.bool)])
            seen |= reached
            zeroed &= rows_zero | ~reached
    dead = torch.zeros(size, dtype=torch.bool)
    for side, (matrices, covered) in sides.items():
        weights, scales = (matrices, []) if side == "weight" else ([], matrices)
        alone = dead_rows(weights, scales) & covered
        if side == "scale":  # a zero scale silences only what passes through its norm
            zeroed = {m: seen & z for m, (seen, z) in zero.items()}
            alone &= silenced_by_norms(producers, zeroed, size)
        dead |= alone
    return dead, partly & ~dead
