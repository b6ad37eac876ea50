"""What a method is, in the shared harness: how it regularises while the network trains, and
which neurons it selects at the budget.

Every method runs in the same pipeline (``run/budgeted.py``): the same data, seed, model,
optimizer, schedule and epochs; at the selection point the method returns a dead mask per
group, the shared :func:`~compactcnn.methods.selection.kill` zeroes those neurons, the
shared compaction removes them exactly, and the compact network trains for the remaining
epochs. Only ``prepare`` and ``select`` differ from method to method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compactcnn.methods.budget import Budget, CostModel
from compactcnn.methods.selection import Masks
from compactcnn.sparsity.neurons import NeuronGroup


@dataclass
class Context:
    """What a method works with: the model's groups, their cost, the budget and the run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    groups: list[NeuronGroup]
    cost: CostModel
    budget: Budget
    prune_steps: int  # optimizer steps before the selection point
    example: torch.Tensor
    val: Any  # the validation set (a TensorDataset), for methods that search
    widths: dict[str, int] | None = None  # live neurons per group, for `scratch`
    balance: str = "none"  # how lam is shared between layers (methods/balance.py)
    lr_warmup_steps: int = 0  # steps over which the learning rate ramps up
    # Objects with state_dict/load_state_dict that a checkpoint keeps (a lam controller).
    state: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)  # rebuilt with the session, not saved


class Method:
    """The default method: dense training, then nothing selected (subclasses override)."""

    name = "dense"
    #: the selected architecture is re-initialised and trained for all epochs (a control)
    from_scratch = False

    def check(self, model: nn.Module) -> None:
        """Raise CompactCNNError when the method does not apply to ``model``."""

    def prepare(self, ctx: Context) -> None:
        """Attach the method's regulariser to the first phase (hooks on the optimizer)."""

    def select(self, ctx: Context) -> Masks:
        """The dead mask of every group at the budget."""
        raise NotImplementedError


def weight_l1(group: NeuronGroup) -> torch.Tensor:
    """Each neuron's L1 norm over its own weight rows (Li et al.'s filter norm)."""
    rows = [s.rows().abs().sum(dim=1) for s in group.slices if s.part == "weight"]
    return torch.stack(rows).sum(dim=0).cpu()
