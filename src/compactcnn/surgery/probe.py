"""Looking at what a silent neuron delivers where it is consumed: zeros, a foldable constant, or
something that keeps it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactcnn.layers import holds_neurons, kind_of
from compactcnn.sparsity.tp_adapter import removes_inputs
from compactcnn.surgery.outcome import KEPT_CONSTANT, KEPT_VARYING

# Normalisations that mix neurons: removing a zero neuron shifts the others' windows or
# changes their mean and variance, so it is never exact there, however small the effect.
_ACROSS = (nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.LayerNorm, nn.GroupNorm)


def root_rows(item) -> tuple[Tensor, Tensor]:
    return torch.tensor(item.root_idxs, dtype=torch.long), torch.tensor(item.idxs,
                                                                         dtype=torch.long)


def silent_neurons(group, size: int) -> tuple[Tensor, Tensor]:
    """Neurons whose producing weight rows are exactly 0.0 in every coupled layer, and in some."""
    silent = torch.ones(size, dtype=torch.bool)
    partly = torch.zeros(size, dtype=torch.bool)
    for item in group:
        m = item.dep.target.module
        if holds_neurons(m) and not removes_inputs(item.dep):
            roots, rows = root_rows(item)
            zero = m.weight.detach().index_select(0, rows).flatten(1).eq(0).all(dim=1)
            silent[roots] &= zero
            partly[roots] |= zero
    return silent, partly


def probe_consumers(work: nn.Module, group, silent: Tensor, probe: Tensor):
    """Look at what each silent neuron delivers to each consumer.

    Returns the folds to apply (consumer -> (input positions per neuron, constant values per
    neuron)) and, per neuron, the reason it must stay ("" when it may go).
    """
    size = silent.numel()
    fate = [""] * size
    consumers = [i for i in group if removes_inputs(i.dep)]
    seen: dict[nn.Module, Tensor] = {}
    hooks = [i.dep.target.module.register_forward_pre_hook(
        lambda m, inp: seen.__setitem__(m, inp[0].detach())) for i in consumers]
    try:
        with torch.no_grad():
            work(probe)
    finally:
        for h in hooks:
            h.remove()
    folds = {}
    for item in consumers:
        m = item.dep.target.module
        roots, cols = root_rows(item)
        order = torch.argsort(roots, stable=True)
        roots, cols = roots[order], cols[order]
        per = cols.numel() // size
        cols = cols.reshape(size, per)
        x = seen[m].movedim(1, 0)[cols.flatten()].reshape(size, per, -1)
        constant = (x == x[..., :1]).all(dim=-1).all(dim=-1)
        values = x[..., 0]
        zero = constant & (values == 0).all(dim=-1)
        foldable = kind_of(m).foldable(m)
        for k in silent.nonzero().flatten().tolist():
            if fate[k] or zero[k]:
                continue
            if not constant[k]:
                fate[k] = KEPT_VARYING
            elif not foldable:
                fate[k] = KEPT_CONSTANT
        if foldable and bool((constant & ~zero & silent).any()):
            folds[m] = (cols, torch.where((constant & silent)[:, None], values, 0.0))
    return folds, fate


def reaches_across(work: nn.Module, group, silent: Tensor, probe: Tensor) -> bool:
    """Whether the silent neurons' channels reach a normalisation across neurons.

    Found by perturbing them where they are produced and watching the normalisations' inputs.
    """
    norms = [m for m in work.modules() if isinstance(m, _ACROSS)]
    producers = [(item.dep.target.module, root_rows(item)) for item in group
                 if holds_neurons(item.dep.target.module) and not removes_inputs(item.dep)]
    if not norms or not producers:
        return False
    seen: dict[str, list[Tensor]] = {"plain": [], "nudged": []}  # every normalisation input
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
                rows = rows[silent[roots]]
                if rows.numel():
                    hooks.append(m.register_forward_hook(nudge(rows)))
            phase[0] = "nudged"
            work(probe)
    finally:
        for h in hooks:
            h.remove()
    return any(not torch.equal(a, b)
               for a, b in zip(seen["plain"], seen["nudged"], strict=True))


