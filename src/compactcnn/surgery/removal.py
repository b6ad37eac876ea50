"""One group's removal: fold its constants into the consumers' biases, cut its channels, and
be able to undo both.

Removals are planned once, on the whole model, and made later in any order and any subset
(see :mod:`compactcnn.surgery.settle`). So nothing here holds a channel index of a consumer:
each removal asks torch-pruning for its group again when it is made, and the constants to fold
are kept per root neuron, in the order of the consumer's columns, which other removals only
shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from compactcnn.sparsity.tp_adapter import apply, removes_inputs
from compactcnn.surgery.edits import fold, restore, snapshot
from compactcnn.surgery.outcome import GroupOutcome
from compactcnn.surgery.probe import consumer_columns


@dataclass
class Removal:
    """Remove root neurons ``idxs`` of ``module``'s group (torch-pruning's ``handler``)."""

    module: nn.Module
    handler: object
    idxs: list[int]
    outcome: GroupOutcome
    folds: dict[nn.Module, Tensor] = field(default_factory=dict)  # consumer -> [size, per]
    saved: list[tuple[nn.Module, dict]] = field(default_factory=list)

    @property
    def folded(self) -> int:
        """How many of the removed neurons had a constant folded (however many consumers)."""
        mask = torch.zeros(self.outcome.neurons, dtype=torch.bool)
        for values in self.folds.values():
            mask |= (values != 0).any(dim=1)
        return int(mask[self.idxs].sum())


def make(graph, removal: Removal) -> None:
    """Fold and cut; on any failure the model is left as it was and the error raised."""
    group = graph.get_pruning_group(removal.module, removal.handler, removal.idxs)
    touched = {i.dep.target.module for i in group if isinstance(i.dep.target.module, nn.Module)}
    removal.saved = [(m, snapshot(m)) for m in touched]
    try:
        neurons = torch.tensor(sorted(removal.idxs))
        for item in group:
            values = removal.folds.get(item.dep.target.module)
            if values is not None and removes_inputs(item.dep):
                cols = consumer_columns(item, neurons)
                fold(item.dep.target.module, cols.flatten(), values[neurons].flatten())
        apply(group)
    except Exception:
        undo(removal)
        raise


def undo(removal: Removal) -> None:
    for m, state in removal.saved:
        restore(m, state)
    removal.saved = []
