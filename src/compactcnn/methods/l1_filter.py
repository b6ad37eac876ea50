"""l1-filter (Li et al., ICLR 2017): train dense, remove each layer's smallest-L1 neurons,
the same share of every layer, down to the budget, then fine-tune."""

from __future__ import annotations

from compactcnn.methods.base import Context, Method, weight_l1
from compactcnn.methods.selection import Masks, uniform


class L1Filter(Method):
    name = "l1-filter"

    def select(self, ctx: Context) -> Masks:
        return uniform(ctx.cost, ctx.budget, [weight_l1(g) for g in ctx.groups])
