"""3D-FilterMap convolutions (Yang et al., ICLR 2018 workshop): compact by design, not by pruning.

A ``FilterMapConv2d`` learns one 3-D map of shape ``(C_m, H_m, W_m)`` instead of
``out_channels`` independent filters. Each of its filters (``in_channels x k x k``) is a
sub-tensor of the map, so neighbouring filters overlap and share weights, and the layer holds
``C_m * H_m * W_m`` weights instead of ``out_channels * in_channels * k * k``.

Where the filters sit (our layout, fixed by the map shape and ``out_channels``):

* Spatially, at every offset of a ``k x k`` window in the ``H_m x W_m`` plane (stride 1, no
  wrap-around), ``S = (H_m - k + 1) * (W_m - k + 1)`` positions: the densest sharing the plane
  allows, so a given spatial budget yields the most distinct filters.
* Along channels, in ``B = ceil(out_channels / S)`` bands starting at the evenly spaced offsets
  ``floor(b * C_m / B)``. A filter reads ``in_channels`` consecutive map channels from its
  band's offset and wraps around circularly past the last one, as in the paper; that is what
  lets a map with only ``in_channels`` channels still give every band a different filter.
* Filter ``f`` lies in band ``f // S`` at spatial position ``f % S`` (row-major); the last band
  may be partly used, which often leaves entries that only it could read unread (see below).

The map must hold the filters (``C_m >= in_channels``, ``H_m, W_m >= k``, ``B <= C_m`` so that
bands start at distinct offsets) and every map entry must be read by some filter, since an entry
nobody reads is a parameter that never trains but still counts; both are refused with a
``CompactCNNError``. ``FilterMap.map_shape_for`` picks a valid shape for a weight budget.
``FilterMapLinear`` applies the same map to a fully connected layer that reads a flattened
feature map (a convolution whose kernel covers the whole map).

Neuron sparsity. The natural neuron of this layer is one extracted filter (one output channel),
as for ``nn.Conv2d``. But filters share map entries, so a group-lasso proximal step cannot zero
one filter without zeroing parts of its neighbours, and the map has no per-filter parameter
group to shrink (a prox on the map would shrink whole overlapping neighbourhoods of filters);
nor can an input channel be cut out, since a filter's channels are a window of the map. So the
layer is a kind of its own (``compactcnn.layers.registry``) that the neuron table counts, at its
map's size, in the shape of the dense layer it stands for, and that neuron groups refuse with
one line. Compaction materialises it first: ``materialize()`` turns every map into a plain
``nn.Conv2d`` / ``nn.Linear`` (``materialized(model)`` does the whole model), which ends the
weight sharing. A compacted filter-map model is therefore a plain network, and a zoo model
records itself as the plain zoo model it became (``plain_name``), so that its model file loads
without any filter-map code. To combine both ideas, train with filter maps, materialise, then
train with group sparsity and compact as usual: compact by pruning, from a start that was
compact by design.
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactcnn.errors import CompactCNNError
from compactcnn.layers.registry import LayerKind, Widths, register

MapShape = tuple[int, int, int]
IntPair = int | tuple[int, int]
Plain = TypeVar("Plain", nn.Conv2d, nn.Linear)

# map_shape_for tries planes up to this many pixels wider than the kernel: wider planes give
# more spatial positions, and past a few extra pixels there are more positions than filters.
_MAX_EXTRA_SIDE = 6


def _gather_index(in_channels: int, out_channels: int, kernel_size: int, map_shape: MapShape,
                  ) -> Tensor:
    """Flat map index of every filter weight, shape ``[out, in, k, k]``; refuses bad maps.

    Built once per layer so that extraction is one vectorised gather.
    """
    c_m, h_m, w_m = map_shape
    k = kernel_size
    where = f"map {map_shape} for {out_channels} filters of {in_channels}x{k}x{k}"
    if c_m < in_channels:
        raise CompactCNNError(f"{where}: needs at least {in_channels} map channels, has {c_m}")
    if h_m < k or w_m < k:
        raise CompactCNNError(f"{where}: the map plane is smaller than the {k}x{k} kernel")
    pos_w = w_m - k + 1
    positions = (h_m - k + 1) * pos_w
    bands = -(-out_channels // positions)
    if bands > c_m:
        raise CompactCNNError(f"{where}: holds at most {c_m * positions} distinct filters")
    # On the CPU whatever the default device: the index is data, even for a model built on
    # the meta device to trace shapes.
    cpu = {"device": "cpu"}
    f = torch.arange(out_channels, **cpu)
    band, pos = f // positions, f % positions
    channel = ((band * c_m) // bands)[:, None] + torch.arange(in_channels, **cpu)[None, :]
    row = (pos // pos_w)[:, None] + torch.arange(k, **cpu)[None, :]
    col = (pos % pos_w)[:, None] + torch.arange(k, **cpu)[None, :]
    index = (((channel % c_m)[:, :, None, None] * h_m + row[:, None, :, None]) * w_m
             + col[:, None, None, :])
    unread = int((torch.bincount(index.flatten(), minlength=c_m * h_m * w_m) == 0).sum())
    if unread:
        raise CompactCNNError(f"{where}: {unread} map entries are read by no filter; use a "
                              "smaller map (FilterMap.map_shape_for picks one)")
    return index


class FilterMap(nn.Module):
    """The shared part of filter-map layers: the map, the gather index and the extraction.

    ``out_channels`` filters of ``in_channels x k x k`` come out of one map; the subclasses
    say what the filters are applied to (a convolution, or a flattened feature map).

    The map is learned in units of ``1 / sqrt(reads)``: the parameter ``map`` holds each entry
    times the square root of the number of filter weights that read it, and ``values()`` (what
    the filters are cut from) is ``map * scale``. The function is the same; what changes is
    the step. An entry's gradient is the sum over the weights that read it, so with plain
    values plain SGD moves an entry read ``r`` times about ``r`` times as far as a dense
    layer's weight; learned this way it moves by the mean of its readers' gradients, as far as
    a dense weight. Without it LeNet-5's ``fc3`` map at 5% of the parameters (about 23 reads
    per entry) diverged at the learning rate that trains the dense network (0.05). Weight
    decay is unaffected: it shrinks every entry by the same factor either way.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 map_shape: MapShape | None, bias: bool) -> None:
        super().__init__()
        if map_shape is None:
            map_shape = self.map_shape_for(in_channels, out_channels, kernel_size, 0)
        map_shape = tuple(map_shape)
        # What the layer was built with: a model file's map must have this shape (the gather
        # index was built for it).
        self.built_shape: MapShape = map_shape
        self.in_channels, self.out_channels, self.kernel_size = (in_channels, out_channels,
                                                                 kernel_size)
        index = _gather_index(in_channels, out_channels, kernel_size, map_shape)
        reads = torch.bincount(index.flatten(), minlength=math.prod(map_shape))
        # nn.Conv2d's default init bound, so a filter starts at the scale of a plain one.
        bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        values = torch.empty(map_shape).uniform_(-bound, bound)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("scale", reads.reshape(map_shape).to(values).rsqrt(),
                             persistent=False)
        self.map = nn.Parameter(values / self.scale)
        self.bias = (nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias
                     else None)

    @staticmethod
    def map_shape_for(in_channels: int, out_channels: int, kernel_size: int,
                      params: int) -> MapShape:
        """A valid map shape holding about ``params`` weights: the smallest plane that can.

        Lets models be built at a parameter budget rather than from hand-picked shapes. The
        plane is the smallest square (from ``k x k`` up) whose valid channel counts reach the
        budget to within half a channel; the channel count then matches the budget. So sharing
        runs along the channel axis (with wrap-around) while the budget allows it, and filters
        also overlap spatially only at budgets too small for that; pass ``map_shape``
        explicitly to choose otherwise. A budget no shape reaches gets the closest one (the
        smallest valid map for ``params=0``).
        """
        closest: tuple[int, MapShape] | None = None
        for side in range(kernel_size, kernel_size + _MAX_EXTRA_SIDE + 1):
            positions = (side - kernel_size + 1) ** 2
            if positions > out_channels:
                break
            bands = -(-out_channels // positions)
            low = max(in_channels, bands)
            # Past bands * in_channels channels the bands leave gaps no filter reads.
            channels = max(low, min(round(params / (side * side)), bands * in_channels))
            while channels >= low:  # a partly used last band may leave gaps too: shrink
                shape = (channels, side, side)
                try:
                    _gather_index(in_channels, out_channels, kernel_size, shape)
                except CompactCNNError:
                    channels -= 1
                    continue
                miss = abs(math.prod(shape) - params)
                if 2 * miss <= side * side:
                    return shape
                if closest is None or miss < closest[0]:
                    closest = (miss, shape)
                break
        if closest is None:
            raise CompactCNNError(f"no filter map can hold {out_channels} filters of "
                                  f"{in_channels}x{kernel_size}x{kernel_size}")
        return closest[1]

    @property
    def map_shape(self) -> MapShape:
        return tuple(self.map.shape)

    def values(self) -> Tensor:
        """The map itself, ``[C_m, H_m, W_m]``: what the filters are cut from (see the class
        doc for why the parameter is scaled)."""
        return self.map * self.scale

    def filters(self) -> Tensor:
        """The extracted filters ``[out, in, k, k]``, differentiable with respect to the map."""
        return self.values().flatten()[self.index]

    def _copy_into(self, layer: Plain) -> Plain:
        with torch.no_grad():
            layer.weight.copy_(self.filters().reshape(layer.weight.shape))
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer.train(self.training)


class FilterMapConv2d(FilterMap):
    """A 2-D convolution whose ``out_channels`` filters are overlapping windows of one 3-D map.

    Drop-in for ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias)``
    (square kernels, no groups or dilation); ``map_shape=None`` takes the smallest valid map.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 map_shape: MapShape | None = None, stride: IntPair = 1, padding: IntPair = 0,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, map_shape, bias)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.filters(), self.bias, self.stride, self.padding)

    def materialize(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding this layer's current filters: the same outputs exactly,
        but independent weights (the sharing ends here), ready for pruning."""
        return self._copy_into(nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            bias=self.bias is not None, device=self.map.device, dtype=self.map.dtype))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"map_shape={self.map_shape}, stride={self.stride}, padding={self.padding}, "
                f"bias={self.bias is not None}")


class FilterMapLinear(FilterMap):
    """A fully connected layer on a flattened ``in_channels x k x k`` feature map, whose units
    are filters from one map.

    Such a layer is a convolution whose kernel covers the whole feature map, so the filter-map
    idea applies unchanged. It matters because the first fully connected layer holds most of
    the weights of small CNNs (93% of LeNet-5's): a budget of a few percent cannot be met by
    sharing convolution weights alone. Input and output are those of
    ``nn.Linear(in_channels * k * k, out_features)``, which ``materialize()`` returns.
    """

    def __init__(self, in_channels: int, out_features: int, kernel_size: int,
                 map_shape: MapShape | None = None, bias: bool = True) -> None:
        super().__init__(in_channels, out_features, kernel_size, map_shape, bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.filters().flatten(1), self.bias)

    def materialize(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding this layer's current units (same outputs exactly)."""
        return self._copy_into(nn.Linear(
            self.in_channels * self.kernel_size ** 2, self.out_channels,
            bias=self.bias is not None, device=self.map.device, dtype=self.map.dtype))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}x{self.kernel_size}x{self.kernel_size}, "
                f"{self.out_channels}, map_shape={self.map_shape}, bias={self.bias is not None}")


def materialize_(model: nn.Module) -> nn.Module:
    """Replace every filter-map layer of ``model`` by its plain layer, in place; ``model``.

    A zoo model (one with ``compactcnn_spec`` and the ``plain_name`` of the zoo model it stands
    for) is then that plain model, with the same shape arguments and none of the filter-map
    options, and records itself so.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, FilterMap):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.materialize())
    spec, plain = getattr(model, "compactcnn_spec", None), getattr(model, "plain_name", None)
    if spec is not None and plain is not None:
        model.compactcnn_spec = {"name": plain} | {
            k: spec[k] for k in ("num_classes", "in_channels", "input_size")}
    return model


def materialized(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every filter-map layer replaced by its plain layer.

    The copy computes the same function and is an ordinary network for the sparsity and
    compaction tools; ``model`` itself is left untouched.
    """
    return materialize_(copy.deepcopy(model))


def _row(m: nn.Module, out: Tensor, chw: tuple[int, int, int] | None) -> dict:
    """The dense layer's shape, but the map's count: ``stored`` replaces the weights."""
    k = m.kernel_size
    conv = isinstance(m, FilterMapConv2d)
    return dict(kind="fm-conv" if conv else "fm-linear", width=k, height=k,
                input=m.in_channels, output=m.out_channels, groups=1,
                out_hw=math.prod(out.shape[2:] if conv else out.shape[1:-1]),
                stored=m.map.numel())


def _no_widths(m: nn.Module) -> Widths:
    """Nothing to record: the constructor's options rebuild the map, whose shape is checked."""
    return {}


def _not_narrowed(m: nn.Module, w: Widths) -> None:
    raise ValueError("a filter-map layer cannot be narrowed; its filters are fixed by the map")


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {"map": m.built_shape, "bias": (m.out_channels,)}


FILTER_MAP = register(LayerKind(
    "filtermap", (FilterMapConv2d, FilterMapLinear), True, _no_widths, _not_narrowed, _shapes,
    _row, ungroupable="is a filter-map layer: its filters share weights, so it has no neurons "
    "to group or remove (train it with --reg none, or materialise it first: `compactcnn "
    "compact MODEL_FILE --out FILE` writes the plain network, which `train --model FILE` "
    "prunes; in Python, compactcnn.layers.filtermap.materialized)"))
