"""Remove dead neurons physically: a smaller, ordinary, dense model with the same outputs.

Exactness is decided where a neuron's channel is consumed, not where it is produced. A
neuron whose producing weights are all 0.0 emits a constant. At each consumer we look at
what actually arrives (one probing forward pass): zeros can simply be dropped; a constant
can be folded into a linear consumer's bias, or a convolution's bias when the convolution
has no zero padding; anything else keeps the neuron. Every removal is then checked against
the original outputs and undone if they moved, which catches what no local rule sees
(local response normalisation across neurons, say). The report says why each kept dead
neuron was kept.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from compactcnn.accounting.flops import flops
from compactcnn.accounting.trace import neuron_table
from compactcnn.errors import CompactCNNError
from compactcnn.inputs import Example, as_input, example_input, shape_of
from compactcnn.layers import holds_neurons
from compactcnn.sparsity.tp_adapter import (
    apply,
    dependency_graph,
    grouped_conv_blocks,
    removes_inputs,
    root_groups,
)
from compactcnn.surgery.edits import balance, fold, restore, snapshot
from compactcnn.surgery.outcome import (
    KEPT_ACROSS,
    KEPT_COUPLED,
    KEPT_LAST,
    KEPT_OUTPUT,
    KEPT_TIED,
    CompactionReport,
    GroupOutcome,
)
from compactcnn.surgery.probe import probe_consumers, reaches_across, silent_neurons


def compact(model: nn.Module, example: Example, *, strict: bool = False,
            tol: float = 1e-5) -> tuple[nn.Module, CompactionReport]:
    """A new dense model without ``model``'s dead neurons, and a report of what was won.

    ``model`` is left untouched. The result computes the same outputs in eval mode (within
    ``tol``, relative to the output scale). ``strict=True`` fails instead of keeping one
    neuron of a layer whose neurons are all dead.
    """
    shape = shape_of(example)
    work = copy.deepcopy(model).eval()
    example = as_input(work, example)
    # The caller's example, at its own scale, and two fixed random inputs beside it.
    probe = torch.cat([example.detach().to(torch.get_default_dtype()).cpu(),
                       example_input(shape, 2, seed=1), example_input(shape, 2, seed=2)])
    with torch.no_grad():
        reference = work(probe)
    scale = max(1.0, reference.abs().max().item())
    before = neuron_table(work, shape)
    flops_before = flops(work, shape)

    graph = dependency_graph(work, probe[:1])
    names = {m: n for n, m in work.named_modules()}
    order = {n: k for k, n in enumerate(names.values())}
    outcomes = []
    for module, fn in root_groups(graph, work, probe[:1]):
        outcomes.append(_compact_group(work, graph, names, module, fn, probe, reference,
                                       tol * scale, strict))
    outcomes.sort(key=lambda o: order[o.name])

    with torch.no_grad():
        diff = (work(probe) - reference).abs().max().item()
    report = CompactionReport(before, neuron_table(work, shape), flops_before, flops(work, shape),
                              outcomes, diff)
    work.train(model.training)
    return work, report


def _compact_group(work, graph, names, module, fn, probe, reference, tol, strict) -> GroupOutcome:
    size = graph.get_out_channels(module)
    group = graph.get_pruning_group(module, fn, list(range(size)))
    layers = tuple(sorted({names[i.dep.target.module] for i in group
                           if holds_neurons(i.dep.target.module) and not removes_inputs(i.dep)},
                          key=list(names.values()).index))
    outcome = GroupOutcome(layers[0] if layers else names[module], layers, size, 0, 0)
    silent, partly = silent_neurons(group, size)
    if coupled := int((partly & ~silent).sum()):
        outcome.kept[KEPT_COUPLED] += coupled
    outcome.dead = int(silent.sum())
    if not outcome.dead:
        return outcome

    folds, fate = probe_consumers(work, group, silent, probe)
    if reaches_across(work, group, silent, probe):  # the first cause, whatever arrives
        fate = [KEPT_ACROSS if s else f for f, s in zip(fate, silent.tolist(), strict=True)]
    dead = silent & torch.tensor([not f for f in fate], dtype=torch.bool)
    outcome.kept.update(f for f in fate if f)
    blocks = grouped_conv_blocks(group)
    dead = balance(dead, blocks, outcome)
    if bool(dead.all()):
        if strict:
            raise CompactCNNError(f"every neuron of '{outcome.name}' is dead; strict mode "
                                  "refuses to keep one")
        dead[0] = False
        outcome.kept[KEPT_LAST] += 1
        # One kept neuron leaves its grouped convolutions' groups uneven: keep one in each.
        dead = balance(dead, blocks, outcome)
    idxs = dead.nonzero().flatten().tolist()
    if not idxs:
        return outcome

    touched = {i.dep.target.module for i in group if isinstance(i.dep.target.module, nn.Module)}
    saved = {m: snapshot(m) for m in touched}
    try:
        for consumer, (cols, values) in folds.items():
            fold(consumer, cols, values, dead)
        apply(graph.get_pruning_group(module, fn, idxs))
        with torch.no_grad():
            moved = (work(probe) - reference).abs().max().item() > tol
        reason = KEPT_OUTPUT if moved else ""
    except (RuntimeError, IndexError, ValueError):  # a cut the graph could not make whole
        reason = KEPT_TIED
    if reason:
        for m, state in saved.items():
            restore(m, state)
        outcome.kept[reason] += len(idxs)
        return outcome
    outcome.removed = len(idxs)
    folded = torch.zeros_like(dead)
    for _, values in folds.values():
        folded |= (values != 0).any(dim=-1)
    outcome.folded = int((folded & dead).sum())  # neurons, however many consumers each feeds
    return outcome
