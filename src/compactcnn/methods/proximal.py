"""Ours: sparse constraints on neurons solved by proximal steps, steered to the budget.

The run's penalty (group, sparse-group, low-rank or group+low-rank) trains from the start, its
group term reweighted by default in a budget run (``reweight``, see
:class:`~compactcnn.sparsity.penalties.GroupLasso`: the survivors are spared most of the
shrinkage, which on vgg_small was worth 0.2 to 0.4 points); a
:class:`~compactcnn.methods.controller.LamController` moves lam so that the live network
follows a path to the budget, reached at 80% of the sparse phase. At the first step at which
the live network meets the budget the architecture freezes (lam stops, the dead stay dead) and
the survivors train on without the penalty. At the selection point the few neurons still above
the budget are trimmed (smallest group norm relative to its layer's live neurons first, so
that layers of different widths compare); if the network is more than 2% below the budget
(a step killed more than the budget needed), dead neurons come back, freshly initialised, in
the layers that lost the largest share, while the budget holds; under a low-rank penalty,
which freezes only once it overshoots (the controller's docstring), an overshoot may lie in the
ranks, so fresh directions come back too, in the factorised layers that kept the smallest share
of their rank. The surviving architecture trains for the remaining epochs.
"""

from __future__ import annotations

from compactcnn.methods.base import Context, Method
from compactcnn.methods.controller import LamController
from compactcnn.methods.selection import Masks, current_dead, greedy, kill, revive, revive_rank

REACH = 0.8  # the share of the sparse phase by which the path reaches the budget


class Proximal(Method):
    def __init__(self, name: str) -> None:
        self.name = name

    def prepare(self, ctx: Context) -> None:
        if ctx.budget.met(ctx.cost.dense_fractions()):  # nothing to remove: no penalty at all
            ctx.optimizer.schedule = lambda step: 0.0
            return
        steps = round(REACH * ctx.prune_steps)
        controller = LamController(ctx.cost, ctx.budget, steps=steps,
                                   start=min(ctx.lr_warmup_steps, steps // 2),
                                   balance=ctx.balance)
        ctx.optimizer.schedule = controller
        ctx.optimizer.weights = controller.weights
        ctx.optimizer.register_step_post_hook(lambda opt, *_: controller.after_step(opt.steps))
        ctx.state["controller"] = controller

    def select(self, ctx: Context) -> Masks:
        ctx.cost.dead_counts()  # a ranked model's ranks as they are now, not at the last decision
        dead = current_dead(ctx.groups)
        scores = []
        for g, d in zip(ctx.groups, dead, strict=True):
            norms = g.norms().cpu()
            live = norms[~d]
            scores.append(norms / live.mean() if len(live) and live.mean() > 0 else norms)
        dead = revive(ctx.cost, ctx.budget, ctx.groups, greedy(ctx.cost, ctx.budget, scores, dead))
        if ctx.cost.ranked():  # a low-rank overshoot lies in the ranks: give rank back too
            kill(ctx.groups, dead)
            revive_rank(ctx.cost, ctx.budget, dead)
        return dead
