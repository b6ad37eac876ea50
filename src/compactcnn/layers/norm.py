"""Normalisations: no neurons of their own; their per-channel parameters follow the neurons of
the layer they normalise. Only BatchNorm's width is recorded in model files (the others are
kept whole by compaction when they mix neurons)."""

from __future__ import annotations

from torch import nn

from compactcnn.layers.registry import LayerKind, Widths, register

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _widths(m: nn.Module) -> Widths:
    return {"out": m.num_features} if isinstance(m, _BATCH_NORMS) else {}


def _narrow(m: nn.Module, w: Widths) -> None:
    if "out" in w:
        m.num_features = w["out"]


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    if not isinstance(m, _BATCH_NORMS):
        return {}
    return {a: (m.num_features,) for a in ("weight", "bias", "running_mean", "running_var")}


NORM = register(LayerKind(
    "norm", (*_BATCH_NORMS, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
             nn.InstanceNorm3d, nn.PReLU), False, _widths, _narrow, _shapes))
