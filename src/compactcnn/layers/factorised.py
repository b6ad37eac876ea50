"""A layer of low rank stored as two thinner layers: the structure factorisation leaves behind.

A convolution (or linear layer) whose weight, reshaped to ``[neurons, fan-in]``, has rank r
computes the same as a convolution with the original kernel, stride, padding, dilation and
groups but only r outputs per group, followed by a 1x1 convolution (a linear layer) back to the
original outputs with the original bias. That costs ``r * (fan-in + neurons)`` weights instead
of ``neurons * fan-in``.

``Factorised`` is an ``nn.Sequential`` of two plain layers, so the forward pass, ONNX export,
FLOPs, latency and the neuron table (which lists ``first`` and ``second`` as two rows, the
first row's output being the rank) need nothing new. It is deliberately not a registered layer
kind: its two halves are ordinary convolutions or linear layers and are counted as such, and a
kind for the pair would count the same neurons twice. Model files record which layers were
replaced (:mod:`compactcnn.files.modelfile`) and rebuild the pair with :meth:`like` on load.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn

# The plain layers a factorisation applies to (exactly these types: a subclass may compute
# something else with the same weight).
FACTORABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Factorised(nn.Sequential):
    """``first`` (the original layer narrowed to the rank) then ``second`` (1x1, the bias)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__(OrderedDict(first=first, second=second))

    @property
    def rank(self) -> int:
        """The rank of the weight this pair stands for (per group for a grouped convolution)."""
        first = self.first
        if isinstance(first, nn.Linear):
            return first.out_features
        return first.out_channels // first.groups

    @classmethod
    def like(cls, layer: nn.Module, rank: int) -> Factorised:
        """A pair shaped to replace ``layer`` at ``rank``, with uninitialised weights.

        ``first`` is a copy of ``layer`` (so every hyper-parameter, dtype and device carries
        over), narrowed to ``rank`` outputs per group and without a bias; ``second`` maps them
        back to ``layer``'s outputs, grouped as ``layer`` is, with ``layer``'s bias.
        """
        if type(layer) not in FACTORABLE:
            raise TypeError(f"cannot factorise a {type(layer).__name__}")
        first = copy.deepcopy(layer)
        weight = layer.weight.detach()
        kw = {"dtype": weight.dtype, "device": weight.device}
        bias = layer.bias is not None
        if isinstance(layer, nn.Linear):
            first.out_features = rows = rank
            second = nn.Linear(rank, layer.out_features, bias=bias, **kw)
        else:
            g = layer.groups
            first.out_channels = rows = g * rank
            second = type(layer)(rows, layer.out_channels, 1, groups=g, bias=bias, **kw)
        first.weight = nn.Parameter(weight.new_empty(rows, *weight.shape[1:]))
        first.bias = None
        return cls(first, second)

    @classmethod
    def of(cls, layer: nn.Module, left: Tensor, right: Tensor) -> Factorised:
        """The pair computing ``layer`` with weight ``left @ right`` per group.

        ``left`` is ``[groups, neurons per group, rank]``, ``right`` is
        ``[groups, rank, fan-in]`` (fan-in = inputs per group times the kernel's size).
        """
        pair = cls.like(layer, left.shape[-1])
        with torch.no_grad():
            pair.first.weight.copy_(right.reshape(pair.first.weight.shape))
            pair.second.weight.copy_(left.reshape(pair.second.weight.shape))
            if layer.bias is not None:
                pair.second.bias.copy_(layer.bias.detach())
        return pair.train(layer.training)
