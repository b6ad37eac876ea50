"""Network slimming (Liu et al., ICCV 2017): L1 on BatchNorm scales while training, then the
neurons with the smallest |gamma| go, by one global threshold, down to the budget.

The L1 term is applied as its proximal step (soft-thresholding gamma by lr * lam after each
optimizer step), which is what the paper's subgradient approximates and which reaches exact
zeros. Neurons without a BatchNorm (fully connected layers) have no scale to rank and stay.
"""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.errors import CompactCNNError
from compactcnn.methods.base import Context, Method
from compactcnn.methods.selection import Masks, greedy

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LAM_GAMMA = 1e-4  # the paper's sparsity weight for VGG


class Slimming(Method):
    name = "slimming"

    def check(self, model: nn.Module) -> None:
        if not any(isinstance(m, _BN) and m.affine for m in model.modules()):
            raise CompactCNNError("slimming does not apply to this model: it has no BatchNorm "
                                  "scales to rank (try l1-filter)")

    def prepare(self, ctx: Context) -> None:
        scales = [m.weight for m in ctx.model.modules() if isinstance(m, _BN) and m.affine]
        lr_of = {id(p): g for g in ctx.optimizer.param_groups for p in g["params"]}

        @torch.no_grad()
        def shrink(*_) -> None:
            for w in scales:
                t = lr_of[id(w)]["lr"] * LAM_GAMMA
                w.copy_(w.sign() * (w.abs() - t).clamp(min=0))

        ctx.optimizer.register_step_post_hook(shrink)

    def select(self, ctx: Context) -> Masks:
        scores = []
        for g in ctx.groups:
            gamma = [s.rows().abs().sum(dim=1) for s in g.slices if s.part == "scale"]
            scores.append(torch.stack(gamma).sum(dim=0).cpu() if gamma
                          else torch.full((g.size,), float("inf")))
        return greedy(ctx.cost, ctx.budget, scores)
