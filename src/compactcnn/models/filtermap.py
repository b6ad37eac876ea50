"""LeNet-5 and the small VGG with 3D-FilterMap layers: compact by design, at a parameter budget.

Each model is its dense original (same layer names, same structure, same forward) with some
layers swapped for filter-map layers, so ``materialized(model)`` (from
``compactcnn.layers.filtermap``) gives back exactly a ``lenet5`` / ``vgg_small`` whose state
dict loads into the dense model, and which records itself as that model (``plain_name``).

Which layers are swapped:

* every convolution except the first: the first one holds a negligible share of the weights
  (520 of LeNet-5's 431,080; 320 of the VGG's 585,066), so sharing its filters saves nothing,
  while it sees raw pixels through only one or three channels, leaving a map almost no room
  to share along the channel axis;
* the first fully connected layer (``fc3`` / ``classifier[0]``), as a ``FilterMapLinear``: it
  reads the flattened last feature map, so its units are filters over that map, and it holds
  most of the weights (93% of LeNet-5, 50% of the VGG). Without it no budget under 94% of
  LeNet-5 could be reached;
* not the last layer: its units are the class scores.

The knob is the zoo option ``fraction`` (default 0.10): the share of the dense model's
parameter count (for the same num_classes, in_channels and input_size) that the filter-map
model should hold. Plain layers, biases and BatchNorm count in full; what is left is shared
between the maps in proportion to the weights they replace, and each map takes the shape
``FilterMap.map_shape_for`` picks for its share, so totals land within a fraction of a percent
of the target (above it only where a share is below the smallest valid map). Maps too small
for ``fraction`` raise ``CompactCNNError`` naming the smallest fraction possible. The fraction
counts the parameters the model stores and learns (the maps), not those of the dense layers it
materialises into.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn

from compactcnn.errors import CompactCNNError
from compactcnn.layers.filtermap import FilterMap, FilterMapConv2d, FilterMapLinear
from compactcnn.models.lenet import LeNet5
from compactcnn.models.registry import register
from compactcnn.models.vgg import VGGSmall

_MNIST = {"num_classes": 10, "in_channels": 1, "input_size": 28}
# Not lenet5's 16: there the last map is 1x1, fc3 has 25,000 weights, and the smallest maps
# hold 10.6% of the model, above the default 10% (up to 10 classes; 20 is enough).
_LENET_MIN_INPUT = 20
_VGG_MIN_INPUT = 8


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _with_maps(model: nn.Module, fraction: float, linear_channels: Mapping[str, int],
               conv_names: list[str]) -> None:
    """Swap the named layers of ``model`` for filter-map layers holding ``fraction`` of its
    parameters; ``linear_channels`` gives the channels of the map each linear layer reads."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
            or not 0 < fraction < 1:
        raise CompactCNNError(f"fraction must be between 0 and 1, got {fraction!r}")
    layers = {name: model.get_submodule(name) for name in [*conv_names, *linear_channels]}
    weights = {name: layer.weight.numel() for name, layer in layers.items()}
    total, replaced = _count(model), sum(weights.values())
    budget = round(fraction * total) - (total - replaced)
    # (in_channels, out_channels, kernel_size) of each layer's filters.
    filters = {name: (linear_channels[name], layer.out_features,
                      math.isqrt(layer.in_features // linear_channels[name]))
               if name in linear_channels else
               (layer.in_channels, layer.out_channels, layer.kernel_size[0])
               for name, layer in layers.items()}
    least = sum(math.prod(FilterMap.map_shape_for(*f, 0)) for f in filters.values())
    if budget < least:
        smallest = (least + total - replaced) / total
        raise CompactCNNError(f"fraction {fraction} is below the smallest filter-map model, "
                              f"{smallest:.4f} of the dense one")
    for name, layer in layers.items():
        map_shape = FilterMap.map_shape_for(*filters[name],
                                            round(budget * weights[name] / replaced))
        bias = layer.bias is not None
        new: FilterMap = (FilterMapLinear(*filters[name], map_shape, bias=bias)
                          if name in linear_channels else
                          FilterMapConv2d(*filters[name], map_shape, layer.stride,
                                          layer.padding, bias=bias))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)


class LeNet5FilterMap(LeNet5):
    """Caffe LeNet-5 with ``conv2`` and ``fc3`` drawn from filter maps (see the module doc)."""

    plain_name = "lenet5"

    def __init__(self, num_classes: int, in_channels: int, input_size: int,
                 fraction: float) -> None:
        super().__init__(num_classes, in_channels, input_size)
        _with_maps(self, fraction, {"fc3": self.conv2.out_channels}, ["conv2"])


class VGGSmallFilterMap(VGGSmall):
    """The small BatchNorm VGG with every conv but the first, and ``classifier[0]``, drawn from
    filter maps (see the module doc)."""

    plain_name = "vgg_small"

    def __init__(self, num_classes: int, in_channels: int, input_size: int,
                 fraction: float) -> None:
        super().__init__(num_classes, in_channels, input_size)
        convs = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        _with_maps(self, fraction, {"classifier.0": self.features[convs[-1]].out_channels},
                   [f"features.{i}" for i in convs[1:]])


@register("lenet5_filtermap", _MNIST, min_input_size=_LENET_MIN_INPUT,
          options={"fraction": 0.10})
def lenet5_filtermap(*, num_classes: int, in_channels: int, input_size: int,
                     fraction: float) -> nn.Module:
    """LeNet-5 with filter maps at ``fraction`` of its parameters (43,103 of 431,080 at 28x28
    and the default 0.10)."""
    return LeNet5FilterMap(num_classes, in_channels, input_size, fraction)


@register("vgg_small_filtermap", _MNIST, min_input_size=_VGG_MIN_INPUT,
          options={"fraction": 0.10})
def vgg_small_filtermap(*, num_classes: int, in_channels: int, input_size: int,
                        fraction: float) -> nn.Module:
    """The small VGG with filter maps at ``fraction`` of its parameters (58,503 of 585,066 at
    28x28 and the default 0.10)."""
    return VGGSmallFilterMap(num_classes, in_channels, input_size, fraction)
