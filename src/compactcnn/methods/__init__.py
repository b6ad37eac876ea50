"""Methods that make a network compact, all in one harness: ours (proximal group, sparse-group
and low-rank penalties steered to a budget) and the usual baselines and controls. A new method
is one file with a :class:`~compactcnn.methods.base.Method` subclass plus one line here."""

from __future__ import annotations

from compactcnn.errors import CompactCNNError
from compactcnn.methods.base import Context, Method
from compactcnn.methods.by_design import FilterMapDesign, GrayHistDesign
from compactcnn.methods.controls import Scratch, Uniform
from compactcnn.methods.evolutionary import Evolutionary
from compactcnn.methods.l1_filter import L1Filter
from compactcnn.methods.proximal import Proximal
from compactcnn.methods.slimming import Slimming
from compactcnn.methods.tp_pruner import TorchPruning

OURS = ("group", "sparse-group", "low-rank", "group+low-rank")
METHODS: dict[str, Method] = {m.name: m for m in (
    *(Proximal(name) for name in OURS), L1Filter(), Slimming(), TorchPruning(), Evolutionary(),
    Scratch(), Uniform(), FilterMapDesign(), GrayHistDesign())}


def method(name: str) -> Method:
    if name not in METHODS:
        raise CompactCNNError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "OURS", "Context", "Method", "method"]
