"""Which parameter slices make up each neuron.

A neuron is one output unit of a layer: for a convolution one 3-D filter, for a linear layer
one weight row. Sparsity acts on whole neurons, so each neuron's *group* holds every scalar
that exists only because the neuron exists: its weight row and bias, the affine parameters
of the norm layer that normalises it, and, where channels are coupled (a residual add, a
concatenation, a depthwise convolution that follows its input), the matching slices of every
coupled layer. The coupling comes from torch-pruning's dependency graph; this module only
translates its groups into tensor slices that a proximal map can act on in one shot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from compactcnn.inputs import Example, as_input
from compactcnn.layers import follower_types, holds_neurons
from compactcnn.sparsity.neurons import NeuronGroup, Slice
from compactcnn.sparsity.norm_paths import has_scales, silenced_by_norms
from compactcnn.sparsity.pinned import pinned_neurons
from compactcnn.sparsity.tp_adapter import (
    dependency_graph,
    grouped_conv_blocks,
    reach_mask,
    removes_inputs,
    removes_outputs,
    tp_groups,
)


def _index(root_idxs: Sequence[int], idxs: Sequence[int], size: int) -> Tensor | None:
    """The ``[neurons, per neuron]`` gather index of one group item, or None for the identity."""
    pairs = sorted(zip(root_idxs, idxs, strict=True))
    if len(pairs) == size and all(r == i == k for k, (r, i) in enumerate(pairs)):
        return None
    counts = torch.bincount(torch.tensor([r for r, _ in pairs]), minlength=size)
    if counts.numel() != size or not bool((counts == counts[0]).all()) or counts[0] == 0:
        raise ValueError("uneven mapping")
    return torch.tensor([i for _, i in pairs]).reshape(size, -1)


_NORM_PARTS = {"weight": "scale", "bias": "shift"}


def _slices_of(item, names: dict[nn.Module, str], members: list[int], full: bool
               ) -> list[Slice]:
    """The item's slices for the root neurons ``members`` (renumbered 0, 1, ... in order)."""
    module = item.dep.target.module
    name = names.get(module)
    if name is None or not isinstance(module, nn.Module):
        return []
    outgoing, incoming = removes_outputs(item.dep), removes_inputs(item.dep)
    size = len(members)
    position = {r: k for k, r in enumerate(members)}
    pairs = [(position[r], i) for r, i in zip(item.root_idxs, item.idxs, strict=True)
             if r in position]
    if not pairs:  # the item reaches none of these neurons
        return []
    try:
        index = _index([r for r, _ in pairs], [i for _, i in pairs], size)
    except ValueError:
        return []
    slices = []

    def add(pname: str, param: nn.Parameter, dim: int, role: str, part: str) -> None:
        # The identity over the group's neurons is the whole parameter only when the layer has
        # no other channels (a norm after a concatenation or an add has those of the others).
        own = index if index is not None or param.shape[dim] == size \
            else torch.arange(size).reshape(size, 1)
        if own is not None:  # gathers need the index where the parameter lives
            own = own.to(param.device)
        slices.append(Slice(f"{name}.{pname}", param, dim, own, role, part))

    if holds_neurons(module) and outgoing:
        add("weight", module.weight, 0, "out", "weight")
        if module.bias is not None:
            add("bias", module.bias, 0, "out", "bias")
    elif holds_neurons(module) and incoming and full:
        grouped = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
        if not grouped:
            add("weight", module.weight, 1, "in", "input")
    elif isinstance(module, follower_types()):
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() >= 1 and p.shape[0] > 1:
                add(pname, p, 0, "out", _NORM_PARTS.get(pname, "other")
                    if not isinstance(module, nn.PReLU) else "other")
    return slices


def neuron_groups(model: nn.Module, example: Example, *, full: bool = False,
                  ignore: Iterable[str] = ()) -> list[NeuronGroup]:
    """One :class:`NeuronGroup` per set of coupled neurons of ``model`` (per input of a
    concatenation whose channels a later layer couples, see :func:`_by_reach`).

    ``full=True`` also puts each neuron's input slices of the next layer in its group, so the
    penalty sees every weight that the neuron's removal would delete (grouped convolutions'
    inputs are left out there: their slices are not one block per neuron).
    """
    names = {m: n for n, m in model.named_modules()}
    order = {n: k for k, n in enumerate(names.values())}
    x = as_input(model, example)
    graph = dependency_graph(model, x)
    found = list(tp_groups(model, x, graph, ignore=ignore))
    built: list[tuple[int, list[int], NeuronGroup]] = []
    for k, g in enumerate(found):
        size = len(g[0].idxs)
        split = [(members, _group(g, members, names, order, full))
                 for members in _by_reach(g, size, names)]
        if len({s.name for _, s in split}) < len(split):  # parts no layer tells apart: keep one
            split = [(list(range(size)), _group(g, list(range(size)), names, order, full))]
        built.extend((k, members, group) for members, group in split)
    producing = [s for _, _, group in built for s in group.slices
                 if s.role == "out" and s.part in ("weight", "bias")]
    pinned = pinned_neurons(model, x, graph, found, producing)
    for k, members, group in built:
        mine = None if pinned[k] is None else pinned[k][torch.tensor(members, dtype=torch.long)]
        if mine is not None and bool(mine.any()):
            group.pinned = mine
    return sorted((group for _, _, group in built), key=lambda g: order[g.name])


def _group(g, members: list[int], names: dict[nn.Module, str], order: dict[str, int],
           full: bool) -> NeuronGroup:
    """The neuron group of torch-pruning's group ``g``'s root neurons ``members``."""
    slices: list[Slice] = []
    layers: list[str] = []
    for item in g:
        new = _slices_of(item, names, members, full)
        slices.extend(new)
        layers.extend(s.name.rsplit(".", 1)[0] for s in new
                      if s.role == "out" and s.name.endswith(".weight")
                      and holds_neurons(item.dep.target.module))
    layers = sorted(dict.fromkeys(layers), key=order.__getitem__) \
        or [names[g[0].dep.target.module]]
    silenced = _silenced_by_scale(g, members) if any(s.part == "scale" for s in slices) else None
    index = torch.tensor(members, dtype=torch.long)
    blocks = [b[index] for b in grouped_conv_blocks(g)]
    return NeuronGroup(layers[0], tuple(layers), len(members), slices, silenced,
                       blocks=blocks)


def _silenced_by_scale(g, members: list[int]) -> Tensor:
    """Which of ``members`` a zero scale in the group's norms would silence: those whose every
    producing layer reaches its consumers through these norms alone (see norm_paths)."""
    size = len(g[0].idxs)
    producers, norms = [], {}
    for item in g:
        module = item.dep.target.module
        if holds_neurons(module) and removes_outputs(item.dep):
            producers.append((item.dep.target, reach_mask(item, size),
                              torch.zeros(size, dtype=torch.bool)))
        elif has_scales(module):
            norms[module] = norms.get(module, torch.zeros(size, dtype=torch.bool)) \
                | reach_mask(item, size)
    return silenced_by_norms(producers, norms, size)[torch.tensor(members, dtype=torch.long)]


def _by_reach(group, size: int, names: dict[nn.Module, str]) -> list[list[int]]:
    """The group's root neurons, split by which of its items reach them.

    An item may reach only some of the group's neurons: the inputs of a concatenation that a
    depthwise convolution or an add after it couples (torch-pruning roots the group there).
    Such an item's slices are not one block per neuron of the group, so the group is split
    into sets of neurons that the same items reach, each of which holds all its scalars
    (the concatenated layer's rows included, which the proximal map must shrink too).
    """
    reach = [frozenset(item.root_idxs) for item in group]
    partial = [k for k, (r, item) in enumerate(zip(reach, group, strict=True))
               if len(r) < size and item.dep.target.module in names]  # a layer, not an op
    if not partial:
        return [list(range(size))]
    classes: dict[tuple[int, ...], list[int]] = {}
    for n in range(size):
        classes.setdefault(tuple(k for k in partial if n in reach[k]), []).append(n)
    return list(classes.values())


def describe(groups: Sequence[NeuronGroup]) -> str:
    """A readable listing of every group, for ``--show-groups`` and debugging."""
    return "\n".join(g.describe() for g in groups)
