"""Training with sparse constraints on neurons by forward-backward splitting (FOBOS).

:class:`ProximalOptimizer` wraps the optimizer a training loop already has: the base step is
the forward (gradient) half, the penalty's proximal map the backward half. Nothing else in the
loop changes, and LR schedulers, ``zero_grad`` and checkpoints treat the wrapper as the
optimizer it wraps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from compactcnn.errors import CompactCNNError
from compactcnn.sparsity.neurons import NeuronGroup
from compactcnn.sparsity.penalties import GroupLasso, ProximalMap
from compactcnn.sparsity.prox_steps import _along_dim, _squared_norms


class ProximalOptimizer(Optimizer):
    """An optimizer whose every step is followed by a proximal step on each neuron group.

    **Step size.** A group is shrunk with the learning rate of the base optimizer's param
    group that holds the group's first parameter, read at every step, so LR schedules and
    per-group learning rates carry over to the penalty as FOBOS requires. With adaptive
    optimizers (Adam) this is the nominal lr, not the per-coordinate step actually taken.

    **Penalty weight.** lam is multiplied by a factor that ramps linearly from 0 at the
    first step to 1 after ``warmup_steps`` steps (so a fresh network is not pruned before it
    has learned which neurons matter), times ``schedule(step)`` when given. The penalty is
    linear in lam, so the factor scales the step handed to the proximal map.

    **Dead neurons** are exactly 0.0 in every scalar of their group, in every coupled layer.
    After each proximal step their slices of every optimizer buffer shaped like a parameter
    (SGD's momentum, Adam's moments) are zeroed too: otherwise momentum alone would push a
    dead neuron back out of zero for many steps after the penalty killed it.

    **Revival.** There is no permanent mask. A later gradient makes a dead neuron non-zero
    again after the base step, and the proximal step zeroes it again unless that step moved
    it farther than the threshold ``lr * lam * sqrt(scalars per neuron)`` (group lasso):
    a neuron comes back only when the loss gradient outweighs the penalty, which is the
    FOBOS optimality condition for a zero group. With Adam the comparison is against the
    normalised update, about ``3 * lr`` per scalar right after the moments were reset.

    **min_neurons.** When a step would leave a group fewer live neurons than this, the largest
    of its dying neurons (by norm before the proximal step) keep their values from after the
    base step, so at least ``min_neurons`` stay live (neurons that were already all zero
    cannot be kept); a warning names the group, once per group.

    GroupLasso runs in place (one multiply per parameter, bit-identical to the pure map);
    other penalties go through ``group.matrix()`` and ``group.write()``.
    """

    def __init__(
        self,
        base: Optimizer,
        groups: Sequence[NeuronGroup],
        penalty: ProximalMap,
        *,
        warmup_steps: int = 0,
        schedule: Callable[[int], float] | None = None,
        min_neurons: int = 0,
    ) -> None:
        if not isinstance(base, Optimizer):
            raise CompactCNNError(
                f"base must be a torch.optim.Optimizer, got {type(base).__name__}")
        for name, value in (("warmup_steps", warmup_steps), ("min_neurons", min_neurons)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CompactCNNError(f"{name} must be an integer >= 0, got {value!r}")
        _check_held(base, groups)
        self.base = base
        self.groups = list(groups)
        self.penalty = penalty
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.min_neurons = min_neurons
        self._steps = 0
        self._warned: set[str] = set()
        # Optimizer.__init__ would build param groups of its own; the wrapper must share the
        # base's (see the properties below). Unpickling is the supported way to make an
        # Optimizer without __init__: it creates the hook tables and patches step for hooks.
        super().__setstate__({})

    # The base's state and param groups are read through, not copied: the base replaces
    # them wholesale in load_state_dict, and LR schedulers write lr into the param groups.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    @property
    def state(self) -> dict[Tensor, Any]:
        return self.base.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.base.defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none)

    @property
    def steps(self) -> int:
        """Steps taken so far: the argument of the warm-up and of ``schedule``."""
        return self._steps

    def lam_factor(self) -> float:
        """The multiplier of lam at the next step (warm-up times schedule)."""
        factor = min(1.0, self._steps / self.warmup_steps) if self.warmup_steps else 1.0
        if self.schedule is not None:
            extra = float(self.schedule(self._steps))
            if not math.isfinite(extra) or extra < 0:
                raise CompactCNNError(
                    f"schedule({self._steps}) returned {extra}; it must be a finite number >= 0")
            factor *= extra
        return factor

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """The base step, then the proximal step of every group; returns the closure's loss."""
        loss = self.base.step(closure)
        factor = self.lam_factor()
        self._steps += 1
        if factor > 0 and self.groups:
            lrs = {id(p): float(g["lr"]) for g in self.param_groups for p in g["params"]}
            with torch.no_grad():
                for group in self.groups:
                    self._prox(group, lrs[id(group.slices[0].param)] * factor)
        return loss

    def _prox(self, group: NeuronGroup, step: float) -> None:
        if isinstance(self.penalty, GroupLasso):
            dead = self._group_lasso_in_place(self.penalty, group, step)
        else:
            dead = self._prox_matrix(group, step)
        neurons = dead.nonzero().flatten()
        if len(neurons):
            self._reset_state(group, neurons)

    def _group_lasso_in_place(self, penalty: GroupLasso, group: NeuronGroup,
                              step: float) -> Tensor:
        """The group-lasso map without the matrix round trip; returns the dead mask.

        Same numbers as ``GroupLasso.__call__``, bit for bit (see :func:`_squared_norms`), but
        the parameters are scaled in place, one multiply each, instead of building, shrinking
        and writing back a copy of the group.
        """
        squared = _squared_norms(group)
        width = sum(s.per_neuron for s in group.slices)
        scale = penalty.factor(squared, width, step)
        dead = scale == 0
        restore = self._protect(group, dead, squared) if self.min_neurons else None
        if restore is not None:
            scale = torch.where(restore, torch.ones_like(scale), scale)
            dead &= ~restore
        for s in group.slices:
            s.param.data.mul_(_along_dim(s, scale, 1.0))
        return dead

    def _prox_matrix(self, group: NeuronGroup, step: float) -> Tensor:
        matrix = group.matrix()
        new = self.penalty(matrix, step)
        dead = ~new.ne(0).any(dim=1)
        if self.min_neurons:  # the norms are only needed to choose whom to keep
            restore = self._protect(group, dead, matrix.square().sum(dim=1))
            if restore is not None:
                new = torch.where(restore.unsqueeze(1), matrix, new)
                dead &= ~restore
        group.write(new)
        return dead

    def _protect(self, group: NeuronGroup, dead: Tensor, squared: Tensor) -> Tensor | None:
        """Which dying neurons to keep as they were so that ``min_neurons`` stay live."""
        need = min(self.min_neurons, group.size)
        live = group.size - int(dead.sum())
        if live >= need:
            return None
        keep = torch.zeros_like(dead)
        keep[squared.topk(need).indices] = True
        if group.name not in self._warned:
            self._warned.add(group.name)
            warnings.warn(
                f"group '{group.name}': the penalty would leave {live} of {group.size} neurons "
                f"live; keeping the {need} largest (min_neurons={self.min_neurons})",
                stacklevel=4)
        return keep & dead & (squared > 0)

    def _reset_state(self, group: NeuronGroup, neurons: Tensor) -> None:
        """Zero the slices of ``neurons`` in every parameter-shaped optimizer buffer.

        These are the entries ``Slice.neuron_mask`` clears; ``index_fill_`` touches only them
        instead of sweeping a parameter-sized mask over every buffer at every step.
        """
        for s in group.slices:
            buffers = [t for t in self.base.state.get(s.param, {}).values()
                       if isinstance(t, Tensor) and t.shape == s.param.shape]
            channels = neurons if s.index is None else s.index.to(neurons.device)[neurons]
            for buffer in buffers:
                buffer.index_fill_(s.dim, channels.flatten(), 0.0)

    def neuron_counts(self) -> dict[str, tuple[int, int]]:
        """Group name -> (live, dead) neurons, read from the parameters as they are now."""
        counts = {}
        for group in self.groups:
            dead = int(group.dead().sum())
            counts[group.name] = (group.size - dead, dead)
        return counts

    def live_fraction(self) -> float:
        """Live neurons over all neurons of all groups (1.0 without groups)."""
        counts = self.neuron_counts().values()
        total = sum(live + dead for live, dead in counts)
        return sum(live for live, _ in counts) / total if total else 1.0

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus a ``"proximal"`` entry (step counter, warnings).

        The base's own keys are untouched, so the base optimizer alone can load it as well.
        """
        state = self.base.state_dict()
        state["proximal"] = {"steps": self._steps, "warned": sorted(self._warned)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of the wrapper, or of the bare base optimizer (then from step 0)."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("proximal", {"steps": 0, "warned": []})
        self.base.load_state_dict(state_dict)
        self._steps = int(extra["steps"])
        self._warned = set(extra["warned"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.base!r}, penalty={self.penalty!r}, "
                f"groups={len(self.groups)}, warmup_steps={self.warmup_steps}, "
                f"min_neurons={self.min_neurons})")


def _check_held(base: Optimizer, groups: Sequence[NeuronGroup]) -> None:
    """Every grouped parameter must be one the base optimizer updates, or the prox is wrong."""
    held = {id(p) for g in base.param_groups for p in g["params"]}
    missing = [(group.name, s.name) for group in groups for s in group.slices
               if id(s.param) not in held]
    if not missing:
        return
    if len(missing) == sum(len(group.slices) for group in groups):
        raise CompactCNNError("the groups were built for another model: parameter "
                              f"'{missing[0][1]}' is not held by the optimizer")
    group_name, param_name = missing[0]
    raise CompactCNNError(f"parameter '{param_name}' of group '{group_name}' is not held by the "
                          "optimizer; give the optimizer all of the model's parameters")
