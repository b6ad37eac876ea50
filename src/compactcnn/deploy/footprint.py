"""Memory of a deployed model, layer by layer: its parameters at the precision it is deployed
in, beside its feature maps, both from the neuron table.

The table counts parameters; what a deployment saves depends on how each is stored. int8
stores one byte per parameter. A binary layer stores one bit per weight, plus one float32
scale per neuron (XNOR-Net's mean |w|) and its biases and norm parameters at float32, since
those are added, not multiplied by ±1. Feature maps are counted at float32 and batch 1
whatever the precision: the binary and int8 paths here compute them in float between layers.
"""

from __future__ import annotations

from collections.abc import Mapping

from compactcnn.accounting.table import LayerRow, NeuronTable

FLOAT_BYTES = 4


def param_bytes(row: LayerRow, precision: str) -> int:
    """Bytes of the parameters of one table row stored at ``precision``."""
    if precision == "float32":
        return row.params * FLOAT_BYTES
    if precision == "int8":
        return row.params
    if precision == "binary" and row.kind != "other":
        per_neuron = row.bias + row.norm_per_neuron  # stored as float, beside the one scale
        weights = row.params - row.output * per_neuron
        return -(-weights // 8) + row.output * (per_neuron + 1) * FLOAT_BYTES
    raise ValueError(f"no byte count for {row.name!r} ({row.kind}) at precision {precision!r}")


def footprint(table: NeuronTable, precision: Mapping[str, str], default: str = "float32"
              ) -> dict:
    """Per-layer parameter bytes at each layer's precision (``precision`` by layer name, else
    ``default``) beside feature-map bytes (float32, batch 1), and their totals."""
    layers = []
    for row in table.layers:
        p = precision.get(row.name, default)
        layers.append({"name": row.name, "kind": row.kind, "precision": p,
                       "params": row.params, "params_bytes": param_bytes(row, p),
                       "feature_map": row.feature_map,
                       "feature_map_bytes": row.feature_map * FLOAT_BYTES})
    params = sum(r["params_bytes"] for r in layers)
    maps = sum(r["feature_map_bytes"] for r in layers)
    return {"layers": layers, "params_bytes": params, "feature_maps_bytes": maps,
            "total_bytes": params + maps}
