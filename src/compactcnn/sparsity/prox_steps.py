"""The proximal half-step on one group, in place, and the bookkeeping around it.

Kept apart from :class:`~compactcnn.sparsity.proximal.ProximalOptimizer` so the arithmetic can be
read (and checked bit for bit against the pure maps) without the optimizer plumbing. Each map
returns the group's dead mask after the step and, when ``min_neurons`` had to keep neurons
alive, how many the penalty alone would have left live (so the caller can warn).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from compactcnn.sparsity.neurons import NeuronGroup, Slice
from compactcnn.sparsity.penalties import GroupLasso, ProximalMap


class Outcome(NamedTuple):
    """What one proximal step did to a group."""

    dead: Tensor  # [neurons], True where the neuron is now all zero
    would_leave: int | None  # live neurons the penalty alone would have left, if protected


def group_lasso_in_place(penalty: GroupLasso, group: NeuronGroup, step: float | Tensor,
                         min_neurons: int) -> Outcome:
    """The group-lasso map without the matrix round trip.

    With a float step, the same numbers as ``GroupLasso.__call__``, bit for bit (see
    :func:`_squared_norms`), but the parameters are scaled in place, one multiply each, instead
    of building, shrinking and writing back a copy of the group. A ``[neurons]`` step (adaptive
    base optimizers) gives each neuron its own threshold.
    """
    squared = _squared_norms(group)
    width = sum(s.per_neuron for s in group.slices)
    if isinstance(step, Tensor):
        norms = squared.sqrt()
        t = penalty.adapt(step.to(squared.dtype) * penalty.threshold(width, 1.0), norms)
        scale = torch.where(norms > t, 1 - t / norms, 0.0)
    else:
        scale = penalty.factor(squared, width, step)
    dead = scale == 0
    restore, would_leave = protect(group, dead, squared, min_neurons)
    if restore is not None:
        scale = torch.where(restore, torch.ones_like(scale), scale)
        dead &= ~restore
    for s in group.slices:
        s.param.data.mul_(_along_dim(s, scale, 1.0))
    return Outcome(dead, would_leave)


def prox_matrix(penalty: ProximalMap, group: NeuronGroup, step: float,
                min_neurons: int) -> Outcome:
    """Any penalty's map through ``group.matrix()`` and ``group.write()``."""
    matrix = group.matrix()
    new = penalty(matrix, step)
    dead = ~new.ne(0).any(dim=1)
    restore, would_leave = None, None
    if min_neurons:  # the norms are only needed to choose whom to keep
        restore, would_leave = protect(group, dead, matrix.square().sum(dim=1), min_neurons)
    if restore is not None:
        new = torch.where(restore.unsqueeze(1), matrix, new)
        dead &= ~restore
    group.write(new)
    return Outcome(dead, would_leave)


def protect(group: NeuronGroup, dead: Tensor, squared: Tensor,
            min_neurons: int) -> tuple[Tensor | None, int | None]:
    """Which dying neurons to keep as they were so that ``min_neurons`` stay live.

    The largest by norm before the step are kept; neurons that were already all zero cannot
    be. Returns the mask to restore and the live count without it, or ``(None, None)``.
    """
    if not min_neurons:
        return None, None
    need = min(min_neurons, group.size)
    live = group.size - int(dead.sum())
    if live >= need:
        return None, None
    keep = torch.zeros_like(dead)
    keep[squared.topk(need).indices] = True
    return keep & dead & (squared > 0), live


def reset_state(group: NeuronGroup, neurons: Tensor, states: dict[Tensor, dict[str, Any]],
                keys: Iterable[str]) -> None:
    """Zero the slices of ``neurons`` in the optimizer buffers named ``keys``.

    These are the entries ``Slice.neuron_mask`` clears; ``index_fill_`` touches only them
    instead of sweeping a parameter-sized mask over every buffer at every step.
    """
    keys = tuple(keys)
    for s in group.slices:
        state = states.get(s.param, {})
        buffers = [state[k] for k in keys
                   if isinstance(state.get(k), Tensor) and state[k].shape == s.param.shape]
        channels = neurons if s.index is None else s.index.to(neurons.device)[neurons]
        for buffer in buffers:
            buffer.index_fill_(s.dim, channels.flatten(), 0.0)


def _squared_norms(group: NeuronGroup) -> Tensor:
    """Each neuron's sum of squares, reduced exactly as ``matrix.square().sum(dim=1)``.

    The squares are written side by side into one buffer and summed there, so the reduction
    order, and hence every bit, matches the pure map's; summing slice by slice would not (the
    last bit differs in a few rows of every layer). Writing through ``out=`` skips the copy
    that concatenating the squares would cost.
    """
    rows = [s.rows() for s in group.slices]
    widths = [r.shape[1] for r in rows]
    dtype = functools.reduce(torch.promote_types, (r.dtype for r in rows))
    squares = torch.empty(group.size, sum(widths), dtype=dtype, device=rows[0].device)
    for r, out in zip(rows, squares.split(widths, dim=1), strict=True):
        torch.square(r, out=out)
    return squares.sum(dim=1)


def _along_dim(s: Slice, per_neuron: Tensor, fill: float | bool) -> Tensor:
    """A per-neuron vector laid along ``s.dim`` of ``s.param``, shaped to broadcast against it.

    With a gather index each neuron's value goes to all its channels; channels of no neuron
    of the group get ``fill``, the value that leaves them alone.
    """
    p = s.param
    if s.index is None:
        along = per_neuron
    else:
        along = torch.full((p.shape[s.dim],), fill, dtype=per_neuron.dtype, device=p.device)
        along[s.index.reshape(-1).to(p.device)] = per_neuron.repeat_interleave(s.index.shape[1])
    return along.reshape([-1 if d == s.dim else 1 for d in range(p.dim())])
