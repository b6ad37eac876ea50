"""Linear layers: a neuron is one weight row; after a flatten its input is C x H x W."""

from __future__ import annotations

import math

from torch import Tensor, nn

from compactcnn.layers.registry import LayerKind, Widths, register


def _widths(m: nn.Module) -> Widths:
    return {"in": m.in_features, "out": m.out_features}


def _narrow(m: nn.Module, w: Widths) -> None:
    m.in_features, m.out_features = w["in"], w["out"]


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}


def _row(m: nn.Module, out: Tensor, chw: tuple[int, int, int] | None) -> dict:
    c, h, w = chw if chw else (m.in_features, 1, 1)
    return dict(kind="linear", width=w, height=h, input=c, output=m.out_features, groups=1,
                out_hw=math.prod(out.shape[1:-1]))


def _fold(m: nn.Module, cols: Tensor, values: Tensor) -> Tensor:
    return m.weight.detach()[:, cols] @ values


LINEAR = register(LayerKind("linear", (nn.Linear,), True, _widths, _narrow, _shapes, _row,
                            lambda m: True, _fold))
