"""Remove dead neurons physically: a smaller, ordinary, dense model with the same outputs.

A neuron is dead by :func:`compactcnn.sparsity.neurons.dead_rows` (all-zero weight rows, or
zero norm scales), so it emits a constant. Exactness is decided where its channel is consumed,
not where it is produced: zeros can simply be dropped; a constant can be folded into a linear
consumer's bias, or a convolution's bias when the convolution has no zero padding; a
normalisation that mixes neurons keeps the ones it mixes; anything else keeps the neuron.
All removals are then made and checked against the original outputs together, and only where
the outputs moved are the culprits searched for and undone (what no local rule sees: a mean
over channels in plain tensor code, a channel shuffle torch-pruning cannot follow). The report
says why each kept dead neuron was kept, and how many forward passes it all cost.

Filter-map layers (whose filters share weights) are materialised into plain layers first, after
the "before" accounting: the report counts the maps as given, the result is a plain network.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from compactcnn.accounting.flops import flops
from compactcnn.accounting.trace import neuron_table
from compactcnn.inputs import Example, as_input, example_input, shape_of
from compactcnn.layers.filtermap import materialize_
from compactcnn.sparsity.tp_adapter import dependency_graph, removes_inputs, tp_groups
from compactcnn.surgery.outcome import KEPT_OUTPUT, KEPT_TIED, CompactionReport
from compactcnn.surgery.plan import Planner
from compactcnn.surgery.probe import record_columns
from compactcnn.surgery.removal import Removal, make, undo
from compactcnn.surgery.settle import settle


def compact(model: nn.Module, example: Example, *, strict: bool = False,
            tol: float = 1e-5) -> tuple[nn.Module, CompactionReport]:
    """A new dense model without ``model``'s dead neurons, and a report of what was won.

    ``model`` is left untouched. The result computes the same outputs in eval mode (within
    ``tol``, relative to the output scale). ``strict=True`` fails instead of keeping one
    neuron of a layer whose neurons are all dead.
    """
    shape = shape_of(example)
    work = copy.deepcopy(model).eval()
    passes = [0]
    counter = work.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    example = as_input(work, example)
    # The caller's example, at its own scale, and two fixed random inputs beside it.
    probe = torch.cat([example.detach().to(torch.get_default_dtype()).cpu(),
                       example_input(shape, 2, seed=1), example_input(shape, 2, seed=2)])
    with torch.no_grad():
        reference = work(probe)
    tol = tol * max(1.0, reference.abs().max().item())
    before, flops_before = neuron_table(work, shape), flops(work, shape)
    materialize_(work)

    graph = dependency_graph(work, probe[:1])
    groups = list(tp_groups(work, probe[:1], graph))
    consumers = {i.dep.target.module for g in groups for i in g if removes_inputs(i.dep)}
    planner = Planner(work, graph, probe, record_columns(work, consumers, probe), strict)
    removals = [r for r in (planner.plan(g) for g in groups) if r is not None]
    for module in getattr(graph, "ungrouped", ()):
        planner.ungrouped(module)
    _settle(work, graph, removals, probe, reference, tol)

    with torch.no_grad():
        diff = (work(probe) - reference).abs().max().item()
    outcomes = sorted(planner.outcomes, key=lambda o: planner.order[o.name])
    after, flops_after = neuron_table(work, shape), flops(work, shape)
    counter.remove()
    report = CompactionReport(before, after, flops_before, flops_after, outcomes, diff, passes[0])
    work.train(model.training)
    return work, report


def _settle(work: nn.Module, graph, removals: list[Removal], probe, reference, tol) -> None:
    def attempt(r: Removal) -> bool:
        try:
            make(graph, r)
        except Exception:  # noqa: BLE001  whatever torch-pruning cannot cut stays, with a reason
            r.outcome.kept[KEPT_TIED] += len(r.idxs)
            return False
        return True

    def check() -> str:
        try:
            with torch.no_grad():
                moved = (work(probe) - reference).abs().max().item() > tol
        except (RuntimeError, IndexError, ValueError):  # the cut left shapes that do not fit
            return KEPT_TIED
        return KEPT_OUTPUT if moved else ""

    def refuse(r: Removal, reason: str) -> None:
        r.outcome.kept[reason] += len(r.idxs)

    settle(removals, attempt, undo, check, refuse)
    for r in removals:
        if r.saved:  # made and kept: the undo state is no longer needed
            r.outcome.removed, r.outcome.folded, r.saved = len(r.idxs), r.folded, []
