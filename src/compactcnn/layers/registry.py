"""The registry of layer kinds: the one place that says what a neuron is in each kind of layer.

Every part of compactcnn that must know a layer's kind asks here instead of keeping its own
``isinstance`` list: the neuron groups (which layers hold neurons), the neuron table (how a
layer counts), compaction (how a constant input folds into its bias) and model files (which
widths to record, and how to narrow a freshly built layer to them). A new kind of layer is one
new file that calls :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

Widths = dict[str, int]


@dataclass(frozen=True)
class LayerKind:
    """How compactcnn treats one kind of layer.

    ``holds_neurons`` layers (convolutions, linear layers) have neurons as output units: they
    are grouped, tabulated and narrowed by compaction. Other kinds (norms) only follow the
    neurons of the layer before them.
    """

    name: str
    types: tuple[type[nn.Module], ...]
    holds_neurons: bool
    widths: Callable[[nn.Module], Widths]
    narrow: Callable[[nn.Module, Widths], None]
    shapes: Callable[[nn.Module], dict[str, tuple[int, ...]]]
    # The neuron table's columns for one traced call: ``chw`` is the (C, H, W) the input was
    # flattened from, if it was.
    row: Callable[[nn.Module, Tensor, tuple[int, int, int] | None], dict] | None = None
    # Whether a constant arriving on an input channel can be moved into the bias exactly, and
    # the bias change it makes: ``fold(module, columns [k, per], values [k, per])``.
    foldable: Callable[[nn.Module], bool] = lambda m: False
    fold: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None
    # Why torch-pruning's groups cannot hold this kind's neurons (its filters share weights,
    # say): neuron groups, the cascade and the methods refuse it with "'NAME' <ungroupable>".
    ungroupable: str | None = None


_KINDS: list[LayerKind] = []


def register(kind: LayerKind) -> LayerKind:
    if any(k.name == kind.name for k in _KINDS):
        raise ValueError(f"layer kind {kind.name!r} is registered twice")
    _KINDS.append(kind)
    return kind


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of ``module``; the most specific registered type wins (a subclass of Conv2d
    registered on its own is not a plain convolution)."""
    best: tuple[int, LayerKind] | None = None
    for kind in _KINDS:
        for t in kind.types:
            if isinstance(module, t):
                depth = type(module).__mro__.index(t)
                if best is None or depth < best[0]:
                    best = (depth, kind)
    return best[1] if best else None


def holds_neurons(module: nn.Module) -> bool:
    kind = kind_of(module)
    return kind is not None and kind.holds_neurons


def channel_dim(module: nn.Module) -> int:
    """Where a consumer's input channels are: last for a linear layer (which also reads
    channels-last tensors, as ConvNeXt's blocks do), second for a convolution."""
    return -1 if isinstance(module, nn.Linear) else 1


def neuron_layer_types() -> tuple[type[nn.Module], ...]:
    """Every module type whose outputs are neurons (for APIs that want a type tuple)."""
    return tuple(t for k in _KINDS if k.holds_neurons for t in k.types)


def follower_types() -> tuple[type[nn.Module], ...]:
    """Module types whose parameters follow the neurons of the layer before them."""
    return tuple(t for k in _KINDS if not k.holds_neurons for t in k.types)
