"""Normalisations that mix neurons: the dead neurons they normalise stay.

Removing a zero neuron before a LayerNorm or GroupNorm over channels changes the others' mean
and variance; before local response normalisation it shifts its neighbours' windows. Never
exact, however small the effect on the probe. Only the neurons a normalisation actually mixes
are kept: torch-pruning's group names the LayerNorm or GroupNorm and which of the group's
neurons reach it, so a neuron that only feeds a layer whose output is normalised (ConvNeXt's
expansion layer, say) still goes. Local response normalisation is plain tensor code to
torch-pruning, so there we fall back to watching its input while nudging the dead neurons.
Compaction keeps the dead neurons these find; the neuron groups pin them beforehand
(:mod:`compactcnn.sparsity.pinned`), so that no count takes them for removed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactcnn.layers import holds_neurons
from compactcnn.sparsity.tp_adapter import removes_inputs, root_rows

_TRACED = (nn.LayerNorm, nn.GroupNorm)
_UNTRACED = (nn.LocalResponseNorm, nn.CrossMapLRN2d)


def mixed_neurons(group, size: int) -> Tensor:
    """The group's neurons that reach a LayerNorm or GroupNorm as its channels."""
    mixed = torch.zeros(size, dtype=torch.bool)
    for item in group:
        if isinstance(item.dep.target.module, _TRACED):
            mixed[root_rows(item)[0]] = True
    return mixed


def untraced_norms(work: nn.Module) -> list[nn.Module]:
    return [m for m in work.modules() if isinstance(m, _UNTRACED)]


def reaches_untraced(work: nn.Module, norms: list[nn.Module], group, dead: Tensor,
                     probe: Tensor) -> bool:
    """Whether nudging the dead neurons where they are produced moves any of ``norms``'
    inputs (two forward passes; only models with local response normalisation pay them)."""
    producers = [(item.dep.target.module, root_rows(item)) for item in group
                 if holds_neurons(item.dep.target.module) and not removes_inputs(item.dep)]
    if not norms or not producers:
        return False
    seen: dict[str, list[Tensor]] = {"plain": [], "nudged": []}
    phase = ["plain"]
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen[phase[0]].append(inp[0].detach()))
             for m in norms]

    def nudge(rows: Tensor):
        def hook(m, inp, out):
            out = out.clone()
            out[:, rows] += 1.0
            return out
        return hook

    try:
        with torch.no_grad():
            work(probe)
            for m, (roots, rows) in producers:
                rows = rows[dead[roots]]
                if rows.numel():
                    hooks.append(m.register_forward_hook(nudge(rows)))
            phase[0] = "nudged"
            work(probe)
    finally:
        for h in hooks:
            h.remove()
    return any(not torch.equal(a, b) for a, b in zip(seen["plain"], seen["nudged"], strict=True))
