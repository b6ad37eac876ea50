"""Neurons that can never be removed, because their channel carries more than its layers.

A group's neuron is removable when zeroing its rows leaves its channel constant wherever it
is consumed, and when nothing on its way depends on how many channels there are. Compaction
keeps a dead neuron that fails either test, so counting it as dead would tell a budget
controller that parameters were saved that never will be. Pinned here, for compaction's
reasons that do not depend on which other neurons are dead:

- an add joins the channel with something no layer produces (``conv(x) + x`` on the network's
  own input), or the neuron is a channel of that input (a depthwise convolution applied to
  it): zero rows still carry the input. One probe finds every such neuron at once: with every
  group's rows zeroed, whatever still differs from one input to another at a consumer's input
  comes from outside the groups;
- a normalisation mixes the channel with its neighbours (LayerNorm, GroupNorm, local response
  normalisation: :mod:`compactcnn.sparsity.mixing`, which compaction asks too);
- the channel passes a reshape torch-pruning could not follow (a channel shuffle), past which
  its group is incomplete.

Compaction also keeps dead neurons for reasons that depend on how many die (the last neuron
of a layer, equal halves of a grouped convolution); those are not pinned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from compactcnn.inputs import example_input, shape_of
from compactcnn.layers import channel_dim
from compactcnn.sparsity.mixing import mixed_neurons, reaches_untraced, untraced_norms
from compactcnn.sparsity.neurons import Slice
from compactcnn.sparsity.tp_adapter import removes_inputs, through_unmapped

_TOL = 1e-6  # relative to the consumer input's scale: zeroed paths give equal values exactly


def pinned_neurons(model: nn.Module, example: Tensor, graph, groups: Sequence,
                   slices: Sequence[Slice]) -> list[Tensor | None]:
    """For each torch-pruning group of ``graph``, ``[neurons]`` True where compaction keeps the
    neuron whatever its rows (the reasons above; ``slices`` are every group's producing rows);
    None where no neuron is pinned (the common case)."""
    pinned = [_structural(graph, g) for g in groups]
    for mask, probed in zip(pinned, _probed(model, example, groups, slices), strict=True):
        if probed is not None:
            mask |= probed
    return [mask if bool(mask.any()) else None for mask in pinned]


def _structural(graph, group) -> Tensor:
    """What the graph alone tells: a channel shuffle pins the whole group, a traced
    normalisation across channels the neurons it mixes."""
    size = len(group[0].idxs)
    if through_unmapped(graph, group):
        return torch.ones(size, dtype=torch.bool)
    return mixed_neurons(group, size)


def _probed(model: nn.Module, example: Tensor, groups: Sequence,
            slices: Sequence[Slice]) -> list[Tensor | None]:
    """What forward passes tell, with all of ``slices`` zero: neurons whose channel reaches a
    consumer with input-dependent content, and whole groups that reach a local response
    normalisation (plain tensor code to torch-pruning, so only a nudge shows it)."""
    if example.device.type == "meta" or not example.is_floating_point():
        return [None] * len(groups)
    consumers = {item.dep.target.module for g in groups for item in g if _takes(item)}
    seen: dict[nn.Module, list[Tensor]] = {m: [] for m in consumers}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen[m].append(args[0].detach()))
             for m in consumers]
    probe = torch.cat([example[:1], example_input(shape_of(example), 1, seed=1)
                       .to(example.device, example.dtype)])
    saved = {id(s.param): (s.param, s.param.detach().clone()) for s in slices}
    modes = {m: m.training for m in model.modules()}  # mixed modes come back as they were
    try:
        with torch.no_grad():
            for s in slices:
                s.write(torch.zeros_like(s.rows()))
            model.eval()
            model(probe)
            for h in hooks:
                h.remove()
            norms = untraced_norms(model)
            lrn = [bool(norms) and reaches_untraced(
                model, norms, g, torch.ones(len(g[0].idxs), dtype=torch.bool), probe)
                for g in groups]
    except (RuntimeError, ValueError, IndexError, TypeError):  # a batch of 2 it cannot take:
        return [None] * len(groups)  # no probe, no pinning (compaction still keeps them)
    finally:
        for m, training in modes.items():
            m.training = training
        for param, value in saved.values():
            param.data.copy_(value)
        for h in hooks:
            h.remove()
    varies = {m: _varies(m, calls) for m, calls in seen.items()}
    result = []
    for g, whole in zip(groups, lrn, strict=True):
        pinned = torch.full((len(g[0].idxs),), whole, dtype=torch.bool)
        for item in g:
            v = varies.get(item.dep.target.module)
            if v is None or not _takes(item):
                continue
            idxs = torch.tensor(item.idxs, dtype=torch.long)
            inside = idxs < v.numel()
            pinned[torch.tensor(item.root_idxs, dtype=torch.long)[inside]] |= v[idxs[inside]]
        result.append(pinned if bool(pinned.any()) else None)
    return result


def _takes(item) -> bool:
    """Whether the item's indices are channels of its module's input: a consumer's, or a
    depthwise convolution's, whose neurons are its input channels."""
    m = item.dep.target.module
    depthwise = isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups == m.in_channels
    return removes_inputs(item.dep) or depthwise


def _varies(module: nn.Module, calls: list[Tensor]) -> Tensor | None:
    """``[input channels]``: which channels differ between the probe's samples."""
    if not calls:
        return None
    dim = channel_dim(module)
    out = None
    for x in calls:
        per_channel = x.float().movedim(dim, 1).flatten(2) if x.dim() > 2 \
            else x.float().unsqueeze(2)
        spread = (per_channel - per_channel[:1]).abs().amax(dim=(0, 2))
        v = (spread > _TOL * max(1.0, x.abs().max().item())).cpu()
        out = v if out is None else out | v
    return out
