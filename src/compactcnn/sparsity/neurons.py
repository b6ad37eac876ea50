"""Neurons as tensor slices: what a group is, and the one meaning of a dead neuron.

A neuron is one output unit of a layer: for a convolution one 3-D filter, for a linear layer
one weight row. Its *group* holds every scalar that exists only because the neuron exists
(weight row, bias, the affine parameters of its norm, coupled layers' slices). The optimizer,
compaction and accounting all ask :func:`dead_rows` whether a neuron is dead.

**Dead.** A neuron is dead when its output no longer depends on the input: its weight row is
exactly 0.0 in every layer that produces it, or the scale (gamma) of the norm that normalises it
is exactly 0.0 in every such norm. It then emits a constant: zero when its bias and shift are
zero too (group lasso zeroes them with the rest of the group), otherwise a constant that
compaction folds into the next layer's bias. A neuron killed through its norm's scale, as
network slimming does, is therefore dead too, where the norm stands on every path out of the
layer: a raw copy of its output that reaches an add beside the norm keeps it live
(:mod:`compactcnn.sparsity.norm_paths`; the group's ``silenced``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Slice:
    """One parameter's share of every neuron of a group.

    Neuron ``n`` owns ``param.index_select(dim, index[n])``; with ``index=None`` it owns
    ``param.select(dim, n)``, the common case that needs no gather.
    """

    name: str
    param: nn.Parameter
    dim: int
    index: Tensor | None = None
    role: str = "out"
    # Which part of its layer the slice is: "weight" or "bias" of a neuron layer, "scale" or
    # "shift" of a norm, "input" of the next layer, "other" (a PReLU slope, say).
    part: str = "weight"

    def rows(self) -> Tensor:
        """The neuron-major matrix ``[neurons, elements per neuron]`` of this slice."""
        p = self.param.detach()
        if self.index is not None:
            n = self.index.shape[0]
            p = p.index_select(self.dim, self.index.reshape(-1))
            return p.movedim(self.dim, 0).reshape(n, -1)
        return p.movedim(self.dim, 0).reshape(p.shape[self.dim], -1)

    def write(self, rows: Tensor) -> None:
        """Store a neuron-major matrix (the inverse of :meth:`rows`) back, in place."""
        p = self.param.data
        if self.index is not None:
            flat = self.index.reshape(-1)
            moved_shape = list(p.movedim(self.dim, 0).shape)
            moved_shape[0] = flat.numel()
            values = rows.reshape(moved_shape).movedim(0, self.dim)
            p.index_copy_(self.dim, flat, values.to(p.dtype))
        else:
            p.movedim(self.dim, 0).copy_(rows.reshape(p.movedim(self.dim, 0).shape))

    def neuron_mask(self, keep: Tensor) -> Tensor:
        """A mask shaped like the parameter that is 0 on the slices of neurons not in ``keep``."""
        mask = torch.ones_like(self.param, dtype=torch.bool)
        moved = mask.movedim(self.dim, 0)
        if self.index is None:
            moved[~keep] = False
        else:
            moved[self.index[~keep].reshape(-1)] = False
        return mask

    @property
    def per_neuron(self) -> int:
        return self.param.numel() // self.param.shape[self.dim] * (
            1 if self.index is None else self.index.shape[1])


@dataclass
class NeuronGroup:
    """The neurons of one layer, or of several layers whose channels are coupled."""

    name: str
    layers: tuple[str, ...]
    size: int
    slices: list[Slice] = field(default_factory=list)
    # ``[neurons]``: those a zero scale of the group's norms silences (their producers reach
    # every consumer through these norms); None: all of them (see norm_paths).
    silenced: Tensor | None = None
    # ``[neurons]``: those compaction keeps whatever their rows (their channel carries the
    # network input, a normalisation mixes it with others, or it passes a channel shuffle),
    # so zero rows never make them removable (see pinned.py); None: none.
    pinned: Tensor | None = None
    # For each grouped convolution the neurons reach, the block of each (grouped_conv_blocks):
    # compaction removes as many dead neurons from each block as from the one with fewest.
    blocks: list[Tensor] = field(default_factory=list)

    def matrix(self) -> Tensor:
        """All the group's scalars, one row per neuron: the object the proximal maps shrink."""
        return torch.cat([s.rows() for s in self.slices], dim=1)

    def write(self, matrix: Tensor) -> None:
        start = 0
        for s in self.slices:
            width = s.per_neuron
            s.write(matrix[:, start:start + width])
            start += width

    @property
    def device(self) -> torch.device:
        return self.slices[0].param.device if self.slices else torch.device("cpu")

    def norms(self) -> Tensor:
        """Euclidean norm of each neuron's group, ``[neurons]``."""
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        for s in self.slices:
            total += s.rows().double().pow(2).sum(dim=1)
        return total.sqrt()

    def dead(self) -> Tensor:
        """Boolean ``[neurons]``, on the parameters' device: see :func:`dead_rows`. A zero
        scale counts only for the neurons it silences (``silenced``); a pinned neuron is
        never dead, and grouped convolutions' blocks lose dead neurons evenly (:func:`even`),
        so what is dead here is what compaction removes."""
        weights = [s.rows() for s in self.slices if s.part == "weight"]
        scales = [s.rows() for s in self.slices if s.part == "scale"]
        if not scales or self.silenced is None:
            dead = dead_rows(weights, scales)
        else:
            by_scale = dead_rows([], scales) & self.silenced.to(scales[0].device)
            dead = dead_rows(weights, []) | by_scale if weights else by_scale
        if self.pinned is not None:
            dead = dead & ~self.pinned.to(dead.device)
        return even(dead, self.blocks)

    @property
    def params(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for s in self.slices:
            seen.setdefault(id(s.param), s.param)
        return list(seen.values())

    def describe(self) -> str:
        lines = [f"group {self.name}: {self.size} neurons, "
                 f"{sum(s.per_neuron for s in self.slices)} scalars per neuron"]
        for s in self.slices:
            where = "all" if s.index is None else f"{s.index.shape[1]} per neuron"
            lines.append(f"  {s.role:3} {s.name:40} dim {s.dim}  {where}")
        return "\n".join(lines)


def even(dead: Tensor, blocks: list[Tensor]) -> Tensor:
    """``dead`` less the neurons a grouped convolution must keep to stay even: each of
    ``blocks`` (one per grouped convolution, the block of each neuron) gives up as many dead
    neurons in every block as in its block with fewest, the first ones of each block. Without
    blocks (most models) ``dead`` itself comes back: ``dead()`` runs at every step."""
    if not blocks:
        return dead
    dead = dead.clone()
    changed = True
    while changed:
        changed = False
        for block in blocks:
            block = block.to(dead.device)
            n_blocks = int(block.max()) + 1
            k = int(torch.bincount(block[dead], minlength=n_blocks).min())
            for b in range(n_blocks):
                extra = (dead & (block == b)).nonzero().flatten()[k:]
                if extra.numel():
                    dead[extra] = False
                    changed = True
    return dead


def dead_rows(weights: list[Tensor], scales: list[Tensor]) -> Tensor:
    """The one test of death: ``[neurons]`` True where every producing weight row is all 0.0,
    or every norm scale is 0.0 (``weights`` and ``scales`` are neuron-major matrices).

    A group with neither (a norm after an add, alone) has no dead neurons.
    """
    rows = weights or scales
    if not rows:
        raise ValueError("dead_rows needs at least one weight or scale matrix")
    dead = torch.zeros(rows[0].shape[0], dtype=torch.bool, device=rows[0].device)
    for matrices in (weights, scales):
        if matrices:
            dead |= torch.stack([m.eq(0).all(dim=1) for m in matrices]).all(dim=0)
    return dead
