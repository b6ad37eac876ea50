"""The two controls that say whether a compact network was worth learning.

``scratch``: the architecture a sparse run found, re-initialised and trained from scratch for
the same total epochs; if it matches the sparse run, the sparse training added nothing.
``uniform``: every layer narrowed by the same share to the budget, trained from scratch; if it
matches, the learned widths added nothing.
"""

from __future__ import annotations

import torch

from compactcnn.errors import CompactCNNError
from compactcnn.methods.base import Context, Method
from compactcnn.methods.selection import Masks, uniform


class Uniform(Method):
    name = "uniform"
    from_scratch = True

    def select(self, ctx: Context) -> Masks:
        # Fresh weights carry no information: keep the first neurons of every layer.
        return uniform(ctx.cost, ctx.budget,
                       [torch.arange(g.size, 0, -1, dtype=torch.float64) for g in ctx.groups])


class Scratch(Method):
    name = "scratch"
    from_scratch = True

    def select(self, ctx: Context) -> Masks:
        if not ctx.widths:
            raise CompactCNNError("scratch needs the widths of a sparse run (widths=LAYER=N,...; "
                                  "`compactcnn compare` passes them from its group run)")
        masks = []
        for g in ctx.groups:
            live = ctx.widths.get(g.name, g.size)
            if not 1 <= live <= g.size:
                raise CompactCNNError(f"widths: {g.name} has {g.size} neurons, cannot keep {live}")
            dead = torch.ones(g.size, dtype=torch.bool)
            dead[:live] = False
            masks.append(dead)
        return masks
