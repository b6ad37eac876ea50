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
from compactcnn.sparsity.prox_steps import group_lasso_in_place, prox_matrix, reset_state
from compactcnn.sparsity.step_length import rule_for, step_length


class ProximalOptimizer(Optimizer):
    """An optimizer whose every step is followed by a proximal step on each neuron group.

    **Step length.** A group is shrunk by the step the base optimizer takes per unit of
    gradient, read from the param group that holds the group's first parameter and from the
    optimizer's state at every step, so LR schedules and per-group learning rates carry over
    to the penalty as FOBOS requires. For SGD (with or without momentum) that is ``lr``; for
    Adam, AdamW, Adamax, RMSprop, Adadelta and Adagrad it is one length per neuron, from the
    optimizer's running averages over the neuron's scalars, so that one lam means the same
    under all of them. Other optimizers are refused; see :mod:`.step_length` for the rule.

    **Penalty weight.** lam is multiplied by a factor that ramps linearly from 0 at the
    first step to 1 after ``warmup_steps`` steps (so a fresh network is not pruned before it
    has learned which neurons matter), times ``schedule(step)`` when given. The penalty is
    linear in lam, so the factor scales the step handed to the proximal map. ``weights``, when
    set, multiplies it once more per group (one float per group, in order): a layer balance.

    **Dead neurons** are exactly 0.0 in every scalar of their group, in every coupled layer.
    After each proximal step their slices of the optimizer's momentum buffers (SGD's and
    RMSprop's ``momentum_buffer``, Adam's ``exp_avg``) are zeroed: otherwise momentum alone
    would push a dead neuron back out of zero for many steps after the penalty killed it.
    Second moments (``exp_avg_sq``, ``square_avg``, Adagrad's sums) are kept: see revival.

    **Revival.** There is no permanent mask. A later gradient makes a dead neuron non-zero
    again after the base step, and the proximal step zeroes it again unless that step moved
    it farther than the threshold ``step length * lam * sqrt(scalars per neuron)`` (group
    lasso): a neuron comes back only when the loss gradient outweighs the penalty, which is
    the FOBOS optimality condition for a zero group. Under SGD that step is ``lr * g``, so a
    gradient of norm above ``lam * sqrt(size)`` revives. Under Adam the dead neuron keeps its
    second moments, so its first step back is ``(1 - beta1) * g / sqrt(v_hat)`` per scalar
    (not the ~3 lr per scalar a reset ``exp_avg_sq`` would give), measured against a
    threshold in the same units: it revives when ``(1 - beta1) * |g|`` beats
    ``lam * sqrt(size)``, and re-enters with a step the size of its old ones. (Heavy-ball SGD
    has the same 1 / (1 - momentum) margin between reviving and staying alive.) Under a
    reweighted group lasso (``GroupLasso(reweight=g)``) a neuron's threshold grows as its norm
    falls, so a dead one must come back farther, sqrt(threshold * the layer's mean norm) for
    g = 1: the penalty's decisions stick.

    **min_neurons.** When a step would leave a group fewer live neurons than this, the largest
    of its dying neurons (by norm before the proximal step) keep their values from after the
    base step, so at least ``min_neurons`` stay live (neurons that were already all zero
    cannot be kept); a warning names the group, once per group.

    GroupLasso runs in place (one multiply per parameter, bit-identical to the pure map
    under SGD); other penalties go through ``group.matrix()`` and ``group.write()`` with one
    step length per group.
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
        self._rule = rule_for(base)
        _check_held(base, groups)
        self.base = base
        self.groups = list(groups)
        self.penalty = penalty
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.min_neurons = min_neurons
        self.weights: Sequence[float] | None = None
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
            hyper = {id(p): g for g in self.param_groups for p in g["params"]}
            with torch.no_grad():
                weights = self.weights or [1.0] * len(self.groups)
                for group, weight in zip(self.groups, weights, strict=True):
                    if weight > 0:
                        self._prox(group, hyper[id(group.slices[0].param)], factor * weight)
        return loss

    def _prox(self, group: NeuronGroup, hyper: dict[str, Any], factor: float) -> None:
        # A pinned neuron stays whatever its rows (pinned.py): shrinking it would win nothing.
        pinned = None if group.pinned is None else group.pinned.to(group.slices[0].param.device)
        kept = group.matrix()[pinned] if pinned is not None else None
        in_place = isinstance(self.penalty, GroupLasso)
        step = step_length(self._rule, group, hyper, self.base.state, per_neuron=in_place)
        if in_place:
            outcome = group_lasso_in_place(self.penalty, group, step * factor, self.min_neurons)
        else:
            outcome = prox_matrix(self.penalty, group, step * factor, self.min_neurons)
        if outcome.would_leave is not None:
            self._warn_protected(group, outcome.would_leave)
        dead = outcome.dead
        if pinned is not None:
            matrix = group.matrix()
            matrix[pinned] = kept
            group.write(matrix)
            dead = dead & ~pinned
        neurons = dead.nonzero().flatten()
        if len(neurons):
            reset_state(group, neurons, self.base.state, self._rule.momentum)

    def _warn_protected(self, group: NeuronGroup, live: int) -> None:
        if group.name in self._warned:
            return
        self._warned.add(group.name)
        warnings.warn(
            f"group '{group.name}': the penalty would leave {live} of {group.size} neurons "
            f"live; keeping the {min(self.min_neurons, group.size)} largest "
            f"(min_neurons={self.min_neurons})", stacklevel=3)

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
