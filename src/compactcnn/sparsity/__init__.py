"""Sparse constraints on neurons: what a neuron's group is (neurons.py, groups.py, through the
torch-pruning adapter), the penalties' proximal maps (penalties.py) and the optimizer that
applies them after every step (proximal.py)."""

from compactcnn.sparsity.groups import describe, neuron_groups
from compactcnn.sparsity.neurons import NeuronGroup, Slice
from compactcnn.sparsity.penalties import (
    PENALTIES,
    GroupLasso,
    GroupLowRank,
    LowRank,
    SparseGroupLasso,
    make_penalty,
)
from compactcnn.sparsity.proximal import ProximalOptimizer

__all__ = ["PENALTIES", "GroupLasso", "GroupLowRank", "LowRank", "NeuronGroup",
           "ProximalOptimizer", "Slice", "SparseGroupLasso", "describe", "make_penalty",
           "neuron_groups"]
