"""Convolutions (1-D, 2-D, 3-D, grouped, depthwise): a neuron is one filter, ``weight[n]``."""

from __future__ import annotations

import math

from torch import Tensor, nn

from compactcnn.layers.registry import LayerKind, Widths, register


def _widths(m: nn.Module) -> Widths:
    return {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}


def _narrow(m: nn.Module, w: Widths) -> None:
    m.in_channels, m.out_channels, m.groups = w["in"], w["out"], w["groups"]


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    if m.in_channels % m.groups or m.out_channels % m.groups:
        raise ValueError(f"{m.in_channels} inputs and {m.out_channels} neurons do not split "
                         f"into {m.groups} groups")
    return {"weight": (m.out_channels, m.in_channels // m.groups, *m.kernel_size),
            "bias": (m.out_channels,)}


def _row(m: nn.Module, out: Tensor, chw: tuple[int, int, int] | None) -> dict:
    k = m.kernel_size
    return dict(kind="conv", width=k[-1], height=k[-2] if len(k) > 1 else 1,
                depth=math.prod(k[:-2]), input=m.in_channels // m.groups,
                output=m.out_channels, groups=m.groups, out_hw=math.prod(out.shape[2:]))


def _foldable(m: nn.Module) -> bool:
    """Zero padding shows a constant input as 0 at the borders, so no single bias fits; a
    grouped convolution sees only some inputs per neuron."""
    unpadded = m.padding == "valid" or (isinstance(m.padding, tuple) and not any(m.padding))
    return m.groups == 1 and unpadded


def _fold(m: nn.Module, cols: Tensor, values: Tensor) -> Tensor:
    return (m.weight.detach()[:, cols].flatten(2).sum(dim=2) * values).sum(dim=1)


CONV = register(LayerKind("conv", (nn.Conv1d, nn.Conv2d, nn.Conv3d), True, _widths, _narrow,
                          _shapes, _row, _foldable, _fold))
