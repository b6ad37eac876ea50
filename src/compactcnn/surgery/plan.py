"""Deciding, group by group, which dead neurons to try to remove and why the others stay.

Nothing is cut here and no forward pass is run per group (except beside local response
normalisation, see :mod:`compactcnn.sparsity.mixing`): what each consumer receives was recorded
once for the whole model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactcnn.errors import CompactCNNError
from compactcnn.layers import holds_neurons
from compactcnn.sparsity.mixing import mixed_neurons, reaches_untraced, untraced_norms
from compactcnn.sparsity.neurons import dead_rows
from compactcnn.sparsity.tp_adapter import (
    grouped_conv_blocks,
    reach_mask,
    removes_inputs,
    through_unmapped,
)
from compactcnn.surgery.candidates import dead_neurons
from compactcnn.surgery.edits import balance
from compactcnn.surgery.outcome import (
    KEPT_ACROSS,
    KEPT_COUPLED,
    KEPT_LAST,
    KEPT_TIED,
    GroupOutcome,
)
from compactcnn.surgery.probe import Columns, deliveries
from compactcnn.surgery.removal import Removal


class Planner:
    """Plans each group's removal and keeps every group's outcome, planned or not."""

    def __init__(self, work: nn.Module, graph, probe: Tensor, seen: dict[nn.Module, Columns],
                 strict: bool) -> None:
        self.work, self.graph, self.probe, self.seen = work, graph, probe, seen
        self.strict = strict
        self.names = {m: n for n, m in work.named_modules()}
        self.order = {n: k for k, n in enumerate(self.names.values())}
        self.untraced = untraced_norms(work)
        self.outcomes: list[GroupOutcome] = []

    def plan(self, group) -> Removal | None:
        """The removal to try for ``group`` (None if there is nothing to remove)."""
        module, handler = group[0].dep.target.module, group[0].dep.handler
        size = len(group[0].idxs)
        layers = tuple(sorted({self.names[i.dep.target.module] for i in group
                               if holds_neurons(i.dep.target.module)
                               and not removes_inputs(i.dep)}, key=self.order.__getitem__))
        outcome = GroupOutcome(layers[0] if layers else self.names[module], layers, size, 0, 0)
        self.outcomes.append(outcome)
        dead, coupled = dead_neurons(group, size)
        if n_coupled := int(coupled.sum()):
            outcome.kept[KEPT_COUPLED] += n_coupled
        outcome.dead = int(dead.sum())
        if not outcome.dead:
            return None
        if through_unmapped(self.graph, group):  # a channel shuffle: its group is incomplete
            outcome.kept[KEPT_TIED] += outcome.dead
            return None
        delivery = deliveries(group, dead, self.seen)
        fate = delivery.fate
        # Mixed by a normalisation: the first cause, whatever arrives.
        mixed = mixed_neurons(group, size)
        if self.untraced and reaches_untraced(self.work, self.untraced, group, dead, self.probe):
            mixed[:] = True
        fate = [KEPT_ACROSS if m and d else f
                for f, m, d in zip(fate, mixed.tolist(), dead.tolist(), strict=True)]
        outcome.kept.update(f for f, d in zip(fate, dead.tolist(), strict=True) if f and d)
        go = dead & torch.tensor([not f for f in fate], dtype=torch.bool)
        idxs = self._even(go, grouped_conv_blocks(group), self._producers(group, size), outcome)
        if not idxs:
            return None
        return Removal(module, handler, idxs, outcome, delivery.folds)

    def ungrouped(self, module: nn.Module) -> None:
        """A layer torch-pruning could not group: its dead neurons stay, with the reason."""
        rows = module.weight.detach().flatten(1)
        dead = int(dead_rows([rows], []).sum())
        name = self.names[module]
        outcome = GroupOutcome(name, (name,), rows.shape[0], dead, 0)
        if dead:
            outcome.kept[KEPT_TIED] += dead
        self.outcomes.append(outcome)

    def _producers(self, group, size: int) -> list[tuple[str, Tensor]]:
        """Each layer that produces the group's neurons, in model order, and which of the
        group's neurons it produces: all of them, or, side by side with the other inputs of a
        concatenation that a later layer couples, its own."""
        masks: dict[str, Tensor] = {}
        for item in group:
            m = item.dep.target.module
            if holds_neurons(m) and not removes_inputs(item.dep):
                name = self.names[m]
                masks[name] = masks.get(name, torch.zeros(size, dtype=torch.bool)) \
                    | reach_mask(item, size)
        return sorted(masks.items(), key=lambda kv: self.order[kv[0]])

    def _even(self, go: Tensor, blocks: list[Tensor], producers: list[tuple[str, Tensor]],
              outcome: GroupOutcome) -> list[int]:
        """The neurons to remove once every layer keeps a neuron (torch-pruning cannot cut a
        layer to nothing, and a group whose cut fails keeps all its neurons) and grouped
        convolutions stay even. A layer keeps a neuron of the block where most go, so that
        evening out its grouped convolutions costs the fewest."""
        go = go.clone()
        for name, reached in producers or [(outcome.name, torch.ones_like(go))]:
            if not bool(go[reached].all()):
                continue
            if self.strict:
                raise CompactCNNError(f"every neuron of '{name}' is dead; strict mode "
                                      "refuses to keep one")
            candidates = reached.nonzero().flatten()
            crowd = torch.zeros(candidates.numel(), dtype=torch.long)
            for block in blocks:
                crowd += torch.bincount(block[go], minlength=int(block.max()) + 1)[
                    block[candidates]]
            go[candidates[int(torch.argmax(crowd))]] = False  # the first of the most crowded
            outcome.kept[KEPT_LAST] += 1
        return balance(go, blocks, outcome).nonzero().flatten().tolist()
