"""The proximal half-step on one group, in place, and the bookkeeping around it.

Kept apart from :class:`~compactcnn.sparsity.proximal.ProximalOptimizer` so the arithmetic can be
read (and checked bit for bit against the pure maps) without the optimizer plumbing.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from compactcnn.sparsity.neurons import NeuronGroup, Slice


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
