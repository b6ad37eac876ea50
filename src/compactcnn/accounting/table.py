"""The per-layer neuron table: the paper's Table 1, derived from any model by tracing it.

Each neuron of a layer is an order-3 tensor (width x height x input), and the layer has
``output`` of them. Removing neurons from layer i removes inputs of layer i+1, so the table
can also predict, by arithmetic alone, what a removal saves (:func:`cascade`). That
prediction is independent of the surgery in :mod:`compactcnn.compaction`, which lets each
check the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from compactcnn.errors import CompactCNNError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


@dataclass(frozen=True)
class LayerRow:
    """One layer of the table.

    ``params`` of a convolution or linear layer counts its weights, its bias and the affine
    parameters of the norm layer that normalises it (``norm_per_neuron`` per neuron), so that
    removing a neuron removes everything it owns. Rows of kind ``other`` hold parameters
    that belong to no neuron of a convolution or linear layer (a norm after an add, say).
    ``stored`` is set for a layer that stores fewer weights than its neurons hold (a filter
    map, whose filters share them): the row keeps the shape of the dense layer it stands for,
    and its parameters count the weights stored.
    """

    name: str
    kind: str
    width: int
    height: int
    input: int
    output: int
    groups: int
    bias: bool
    norm_per_neuron: int
    out_hw: int
    other_params: int = 0
    depth: int = 1  # the third kernel side of a 3-D convolution (not a column of the table)
    stored: int | None = None

    @property
    def params(self) -> int:
        if self.kind == "other":
            return self.other_params + self.output * self.norm_per_neuron
        weights = (self.output * self.width * self.height * self.depth * self.input
                   if self.stored is None else self.stored)
        return weights + self.output * (self.bias + self.norm_per_neuron)

    @property
    def feature_map(self) -> int:
        return self.output * self.out_hw if self.kind != "other" else 0

    def as_dict(self) -> dict:
        keys = ("name", "kind", "width", "height", "input", "output", "groups")
        return {k: getattr(self, k) for k in keys} | {"params": self.params,
                                                       "feature_map": self.feature_map}


@dataclass(frozen=True)
class NeuronTable:
    model: str
    input: tuple[int, int, int]
    layers: tuple[LayerRow, ...]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def total_feature_map(self) -> int:
        return sum(r.feature_map for r in self.layers)

    @property
    def neurons(self) -> int:
        return sum(r.output for r in self.layers if r.kind != "other")

    def row(self, name: str) -> LayerRow:
        for r in self.layers:
            if r.name == name:
                return r
        raise CompactCNNError(f"unknown layer '{name}'; layers: "
                              + ", ".join(r.name for r in self.layers if r.kind != "other"))

    def memory(self, dtype: str = "float32", batch: int = 1) -> dict:
        """Bytes of the parameters plus bytes of every layer's output feature maps."""
        if dtype not in DTYPE_BYTES:
            raise CompactCNNError(f"unknown dtype '{dtype}'; choose one of: "
                                  + ", ".join(DTYPE_BYTES))
        if batch < 1:
            raise CompactCNNError(f"batch must be >= 1, got {batch}")
        size = DTYPE_BYTES[dtype]
        params = self.total_params * size
        maps = self.total_feature_map * batch * size
        return {"dtype": dtype, "batch": batch, "params_bytes": params,
                "feature_maps_bytes": maps, "total_bytes": params + maps}

    def as_dict(self, dtype: str = "float32", batch: int = 1) -> dict:
        return {"model": self.model, "input": list(self.input),
                "layers": [r.as_dict() for r in self.layers],
                "total_params": self.total_params, "memory": self.memory(dtype, batch)}
