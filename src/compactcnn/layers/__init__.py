"""Layer kinds, one file each; importing this package registers them all (see registry.py)."""

from compactcnn.layers import conv, linear, norm  # noqa: F401  (registration)
from compactcnn.layers.factorised import Factorised
from compactcnn.layers.registry import (
    LayerKind,
    channel_dim,
    follower_types,
    holds_neurons,
    kind_of,
    neuron_layer_types,
    register,
)

__all__ = ["Factorised", "LayerKind", "channel_dim", "follower_types", "holds_neurons", "kind_of",
           "neuron_layer_types", "register"]
