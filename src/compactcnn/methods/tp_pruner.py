"""torch-pruning: Torch-Pruning's GroupNormPruner in the shared harness.

Sparse training with its group-norm regulariser (added to the gradients before every step),
then the neurons with the smallest group importance (its GroupMagnitudeImportance, L2) go,
ranked globally, down to the budget, then fine-tuning. Everything but the regulariser and the
ranking is shared with the other methods.
"""

from __future__ import annotations

from compactcnn.methods.base import Context, Method
from compactcnn.methods.selection import Masks, greedy
from compactcnn.sparsity.tp_adapter import group_norm_pruner, pruner_importance

REG = 1e-4  # GroupNormPruner's default regularisation strength


class TorchPruning(Method):
    name = "torch-pruning"

    def prepare(self, ctx: Context) -> None:
        pruner = group_norm_pruner(ctx.model, ctx.example, REG)
        ctx.optimizer.register_step_pre_hook(lambda *_: pruner.regularize(ctx.model))
        ctx.tools["pruner"] = pruner

    def select(self, ctx: Context) -> Masks:
        pruner = ctx.tools.get("pruner") or group_norm_pruner(ctx.model, ctx.example, REG)
        importance = pruner_importance(pruner, ctx.model)
        scores = []
        for g in ctx.groups:
            imp = importance.get(g.name)
            # GroupMagnitudeImportance normalises within each group (by its mean), which
            # puts all groups on one scale for a global ranking, as its global pruning does.
            scores.append(imp if imp is not None and len(imp) == g.size
                          else g.norms().cpu().float())
        return greedy(ctx.cost, ctx.budget, scores)
