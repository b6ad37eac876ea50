"""A run with a budget: every method in one harness.

``attach`` readies the method when the session is built (or rebuilt to resume), so the sparse
phase checkpoints and resumes like any run; ``select_and_compact`` ends that phase: the method
chooses the dead neurons, they are zeroed and compacted away exactly, and (for the controls)
the compact network is re-initialised before it trains for the remaining epochs. A method that
is compact by design (``methods/by_design.py``) builds its network in ``attach`` instead, and
``select_and_compact`` hands that network on in place of a compaction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from compactcnn.errors import CompactCNNError
from compactcnn.methods import Context, method
from compactcnn.methods.budget import CostModel
from compactcnn.methods.by_design import DESIGNED, ByDesign, design_report
from compactcnn.methods.selection import Masks, current_dead, kill
from compactcnn.run.config import parse_widths
from compactcnn.run.optimizers import batches_per_epoch
from compactcnn.sparsity.groups import neuron_groups
from compactcnn.sparsity.penalties import LOW_RANK
from compactcnn.sparsity.proximal import ProximalOptimizer
from compactcnn.surgery.compaction import compact
from compactcnn.surgery.outcome import CompactionReport


def prune_epochs(cfg) -> int:
    """Epochs before the selection point: none for the controls, which train from scratch."""
    if method(cfg.method_name).from_scratch:
        return 0
    return max(1, min(cfg.epochs, round(cfg.epochs * cfg.prune_fraction)))


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, cfg, splits) -> Context:
    """The method's context, with its regulariser attached to ``optimizer``; an impossible
    budget or a method that does not apply is refused here, before any training."""
    m = method(cfg.method_name)
    m.check(model)
    example = splits.train[:1][0].to(next(model.parameters()).device)
    groups = optimizer.groups if isinstance(optimizer, ProximalOptimizer) \
        else neuron_groups(model, example)
    cost = CostModel(model, example, groups, ranked=cfg.reg in LOW_RANK)
    floor = cost.fractions(torch.tensor([g.size - 1 for g in groups], dtype=torch.float64))
    if not isinstance(m, ByDesign) and not cfg.budget.met(floor):
        raise CompactCNNError(f"the budget {cfg.budget} cannot be met by {cfg.model}: with one "
                              "neuron left in every layer it keeps "
                              + ", ".join(f"{k} {v:.1%}" for k, v in floor.items()))
    per_epoch = batches_per_epoch(splits.train, cfg.batch_size)
    ctx = Context(model, optimizer, groups, cost, cfg.budget, prune_epochs(cfg) * per_epoch,
                  example, splits.val,
                  parse_widths(cfg.widths) if cfg.widths else None, cfg.balance,
                  round(cfg.lr_warmup_epochs * per_epoch))
    if ctx.prune_steps:
        m.prepare(ctx)
    if isinstance(m, ByDesign):
        ctx.tools[DESIGNED] = m.design(ctx, cfg.model, cfg.seed + 1, splits)
    return ctx


class Selected(NamedTuple):
    sparse: nn.Module  # the trained model with the method's dead neurons zeroed
    small: nn.Module  # its compaction
    outcome: CompactionReport
    selection: dict[str, Any] | None  # selection_counts(), for a method that selects


def select_and_compact(ctx: Context, cfg) -> Selected:
    """End the sparse phase: the method selects, the selected neurons die, compaction."""
    m = method(cfg.method_name)
    if DESIGNED in ctx.tools:
        designed = ctx.tools[DESIGNED].eval()
        return Selected(ctx.model.cpu().eval(), designed,
                        design_report(ctx.model.cpu(), designed, ctx.example.cpu()), None)
    trained = current_dead(ctx.groups)
    dead = m.select(ctx)
    kill(ctx.groups, dead)
    sparse = ctx.model.cpu().eval()
    small, outcome = compact(sparse, ctx.example.cpu())
    if m.from_scratch:
        torch.manual_seed(cfg.seed + 1)
        for module in small.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return Selected(sparse, small, outcome, selection_counts(trained, dead, ctx.prune_steps))


def selection_counts(trained: Masks, selected: Masks, steps: int) -> dict[str, int]:
    """Where the removed neurons came from: dead when the sparse phase ended (our penalty's
    exact zeros) or chosen at the selection point; and the dead ones the selection brought back.

    A proximal run whose removals come mostly from the selection did not have the steps to
    reach the budget by the penalty (the report says so): a one-shot trim by norm then did
    the work, which is a different method from the paper's.
    """
    def total(masks: Masks) -> int:
        return sum(int(m.sum()) for m in masks)

    return {"sparse_steps": steps,
            "dead_in_training": total([t & s for t, s in zip(trained, selected, strict=True)]),
            "chosen_at_selection": total([s & ~t for t, s in zip(trained, selected, strict=True)]),
            "brought_back": total([t & ~s for t, s in zip(trained, selected, strict=True)])}


def reached(ctx: Context, small: nn.Module) -> dict[str, float]:
    """The budget's figures for the compact model, as fractions of the dense model's.

    Parameters as the neuron table counts them, so that a filter map counts its map."""
    cost = CostModel(small, tuple(ctx.example.shape[1:]), [])
    after = cost.dense | {"params": cost.table.total_params}
    return {k: after[k] / ctx.cost.dense[k] for k in after}
