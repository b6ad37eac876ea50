"""Whether a zero norm scale silences a neuron: only where its norms stand on every path.

A zero scale (as network slimming leaves it) makes only its norm's *output* constant. A layer
whose raw output also reaches a consumer beside the norm (an add that joins it to the norm's
output, say) still passes the neuron's signal on. Both the optimizer's dead counts
(:meth:`compactcnn.sparsity.neurons.NeuronGroup.dead`) and compaction's candidates ask this one
walk of torch-pruning's graph, so they agree on which neurons a zero scale kills.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactcnn.layers import follower_types, holds_neurons


def has_scales(module: nn.Module) -> bool:
    """Whether ``module`` is a norm with one scale per channel, whose zero kills (a PReLU's
    slope is not a scale)."""
    return isinstance(module, follower_types()) and not isinstance(module, nn.PReLU) \
        and getattr(module, "weight", None) is not None and module.weight.dim() == 1


def behind_norms(node, norms: dict[nn.Module, Tensor], size: int) -> Tensor:
    """``[size]``: the neurons for which every path out of ``node`` (a producing layer, in
    torch-pruning's graph) meets one of ``norms`` covering them before anything else reads it:
    a layer, an op that joins other inputs to it (an add; a concatenation only puts channels
    side by side), or the model's output. ``norms`` maps each norm to the neurons it covers."""
    covered = torch.ones(size, dtype=torch.bool)
    stack, seen = list(node.outputs), set()
    if not stack:
        return ~covered
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.module in norms:
            covered &= norms[n.module]
        elif holds_neurons(n.module) or not n.outputs \
                or (len(n.inputs) > 1 and getattr(n.type, "name", "") != "CONCAT"):
            return torch.zeros(size, dtype=torch.bool)
        else:
            stack.extend(n.outputs)
    return covered


def silenced_by_norms(producers: list[tuple[object, Tensor, Tensor]],
                      norms: dict[nn.Module, Tensor], size: int) -> Tensor:
    """``[size]``: the neurons that some layer produces and that every layer producing them
    either emits as a constant or hands on through ``norms`` alone. ``producers`` holds
    ``(node, the neurons it reaches, those of them it emits as a constant)``."""
    produced = torch.zeros(size, dtype=torch.bool)
    ok = torch.ones(size, dtype=torch.bool)
    for node, reached, constant in producers:
        produced |= reached
        ok &= ~reached | constant | behind_norms(node, norms, size)
    return ok & produced
