"""A controller on lam that steers the live network to a budget during sparse training.

The proximal step kills neurons at a rate set by lam, and which lam reaches a given size is
what users used to guess. Because dead neurons are exact zeros, the compact model's size is
known at every step (:class:`~compactcnn.methods.budget.CostModel`), so lam can be steered:
every ``INTERVAL`` steps the live size is compared with a planned path that falls from the
dense size to the budget along a cubic (fast at first, gentle near the end, like gradual
pruning schedules), and lam's multiplier goes up when the network, with the neurons on their
way out counted as gone, is behind the path and down when it is ahead. Neurons are not frozen
while the controller runs: a neuron that the gradient wants back may revive, and the
controller then simply asks for more. At the same
interval it re-prices the layers (:mod:`~compactcnn.methods.balance`), since what one more dead
neuron saves changes as its neighbours die.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from compactcnn.methods.balance import ALL, metric_weights
from compactcnn.methods.budget import METRICS, Budget, CostModel
from compactcnn.methods.selection import SLACK, current_dead, kill

INTERVAL = 10  # steps between decisions
GAIN = 1.15  # lam's factor per decision


@dataclass
class LamController:
    """A multiplier of lam; callable as ``ProximalOptimizer(schedule=...)``.

    **Lag.** Raising lam does not kill at once: a neuron shrinks for a while before it reaches
    zero, so a rule that watches only the dead count keeps raising lam while a wave of neurons
    is already on its way out, and overshoots (on a short phase, down to chance). The
    controller therefore compares with the path ``horizon`` steps ahead, counting as dead the
    neurons whose norm, extrapolated at its rate of fall over the last interval, reaches zero
    by then.

    **Rate.** One decision every 10 steps, at a gain of 1.15. A faster rule for short phases
    (the gain set so that lam could move 100-fold within the path) was measured and is not
    kept: on vgg_small with a 68-step path it drove four layers to one neuron each and the
    network to chance. On such a phase lam cannot rise far, few neurons die in training, and
    the selection point trims the rest by norm.

    **Warm-up.** The path starts at ``start``, the end of the learning rate's warm-up, and lam
    holds until then. While the learning rate is small the prox shrinks little whatever lam
    is, so a controller that already steered would wind lam up against a network that cannot
    follow, and release it all at once when the learning rate arrives (measured: vgg_small
    fell to chance in its second epoch).

    **Prices.** Under ``balance="per-metric"`` each metric of a joint budget has its own
    multiplier, raised while that metric is behind its path and lowered once it is ahead, and
    each group's weight mixes the metrics' prices in proportion (lam's factor is their mean):
    one multiplier per constraint, so a metric already met stops pressing the neurons it
    prices. With one multiplier for both, a run bound by its FLOPs went on pressing every
    neuron alike: vgg_small under ``params=0.10,flops=0.10`` ended at 4.5% of its parameters
    (README, *A FLOPs budget, and both budgets at once*). Every other rule has one price and
    one multiplier, moved when any metric is behind.

    **Freeze.** Checked after every step: once the live network meets the budget, lam is 0
    for the rest of the sparse phase and the neurons dead at that step are zeroed after every
    step, so the survivors train without the penalty and nothing more dies. Without it, lam,
    high from following the path, came down by 1.15 every 10 steps while the neurons it had
    set falling kept dying: vgg_small (full data, 4 epochs, 10%) met the budget at step 667
    and was at 5.6% by step 797, and the selection then brought 76 neurons back freshly
    initialised. A run with a nuclear norm (low-rank, group+low-rank) freezes later, once it
    overshoots: when its dead neurons alone, every layer priced at full rank (its ranks are
    free after the freeze and may grow back, which a mask cannot hold), lie more than
    ``SLACK`` (2%) below the budget, where the selection starts bringing neurons back, even
    with any one of them back (on lenet5 at 5% one conv2 neuron is 4% of the budget, and one
    neuron too many is no overshoot). Until then its penalties go on at the budget, lam
    falling as the network runs ahead of the path. Measured (session 13, seed 0): freezing
    such runs at the budget lost 0.25 points on lenet5 at 10% and 5% and 0.12 on vgg_small at
    5% against never freezing them; never freezing them lost 0.6 to 0.7 points on vgg_small
    with a one-epoch sparse phase, where the controller overshot and 118 neurons came back
    fresh.
    """

    cost: CostModel
    budget: Budget
    steps: int  # the step by which the path reaches the budget
    start: int = 0  # the step at which the path leaves the dense size
    bounds: tuple[float, float] = (1e-3, 1e5)
    balance: str = "none"
    weights: list[float] = field(default_factory=list)  # per group; ProximalOptimizer.weights
    norms: list[list[float]] | None = None  # each group's norms at the last decision
    frozen: list[Tensor] | None = None  # per group, the dead mask when the budget was met

    def __post_init__(self) -> None:
        self.prices = metric_weights(self.cost, self.budget, self.balance)
        self.multipliers = dict.fromkeys(self.prices, 1.0)  # one per price, moved by its metric
        self._share()
        self.horizon = max(INTERVAL, (self.steps - self.start) // 10)

    @property
    def multiplier(self) -> float:
        """lam's factor: the mean of the prices' multipliers (the only one, under one price)."""
        return sum(self.multipliers.values()) / len(self.multipliers)

    def _share(self) -> None:
        """Each group's weight: the prices mixed in proportion to their multipliers, so that
        a metric already met (its multiplier falling) stops pressing the neurons it prices."""
        if len(self.prices) == 1:  # as they are: a mix of one would round them
            self.weights[:] = next(iter(self.prices.values()))
            return
        total = sum(self.multipliers.values())
        self.weights[:] = [sum(self.multipliers[k] * w[g] for k, w in self.prices.items())
                           / total for g in range(len(self.cost.groups))]

    def __call__(self, step: int) -> float:
        return 0.0 if self.frozen is not None else self.multiplier

    def after_step(self, step: int) -> None:
        """The optimizer's post-step hook: hold a frozen architecture, freeze it at the
        budget, or steer."""
        if self.frozen is not None:  # the base step's gradient moved the dead: zero them again
            kill(self.cost.groups, self.frozen)
        elif self._freezes():
            self.frozen = current_dead(self.cost.groups)
        else:
            self.update(step)

    def _freezes(self) -> bool:
        """At the budget, priced at full rank (the ranks are free after a freeze); under a
        nuclear norm only once it overshoots (see the class docstring)."""
        dead = self.cost.dead_neurons()
        excess = self.budget.excess(self.cost.fractions(dead, full_rank=True))
        if not self.cost.ranked():
            return excess <= 0
        return excess < -SLACK and all(  # ...by more than any one neuron: one is no overshoot
            self.budget.excess(self.cost.fractions(dead - one, full_rank=True)) < -SLACK
            for one in torch.eye(len(dead), dtype=dead.dtype)[dead > 0])

    def planned(self, step: int) -> dict[str, float]:
        """The size the path asks for at ``step``, per metric of the budget."""
        s = min(1.0, max(0.0, (step - self.start) / max(self.steps - self.start, 1)))
        return {k: getattr(self.budget, k) + (1 - getattr(self.budget, k)) * (1 - s) ** 3
                for k in METRICS if getattr(self.budget, k) is not None}

    def update(self, step: int) -> dict[str, float] | None:
        """Compare with the path every ``INTERVAL`` steps; returns the live fractions then."""
        if step < self.start or (step - self.start) % INTERVAL:
            return None
        dead = self.cost.dead_counts()
        now = self.cost.fractions(dead)
        norms = [g.norms().detach().double().cpu() for g in self.cost.groups]
        if self.norms is not None:
            dead = dead + torch.tensor([float(self._doomed(n, torch.tensor(p, dtype=n.dtype)))
                                        for n, p in zip(norms, self.norms, strict=True)],
                                       dtype=torch.float64)
        self.norms = [n.tolist() for n in norms]
        ahead = self.cost.fractions(dead)
        behind = {k: ahead[k] > v for k, v in self.planned(step + self.horizon).items()}
        behind[ALL] = any(behind.values())
        low, high = self.bounds
        for k, value in self.multipliers.items():
            factor = GAIN if behind[k] else 1 / GAIN
            self.multipliers[k] = min(high, max(low, value * factor))
        self.prices = metric_weights(self.cost, self.budget, self.balance)
        self._share()
        return now

    def _doomed(self, norms: Tensor, before: Tensor) -> int:
        """Live neurons whose norm, falling as over the last interval, is zero within the
        horizon."""
        fall = (before - norms).clamp(min=0) / INTERVAL
        return int(((norms > 0) & (norms <= fall * self.horizon)).sum())

    def state_dict(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier, "multipliers": dict(self.multipliers),
                "weights": list(self.weights),
                "norms": self.norms, "frozen": None if self.frozen is None
                else [m.nonzero().flatten().tolist() for m in self.frozen]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # a checkpoint made before multipliers per price held one, shared by every price
        values = state.get("multipliers") or dict.fromkeys(self.multipliers,
                                                           state["multiplier"])
        if set(values) != set(self.multipliers):
            raise ValueError(f"lam multipliers for {sorted(values)}, "
                             f"not {sorted(self.multipliers)}")
        for k, value in values.items():
            value = float(value)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"lam multiplier {value} is not a positive number")
            self.multipliers[k] = value
        if "weights" in state:  # in place: the optimizer holds this very list
            self.weights[:] = [float(w) for w in state["weights"]]
        self.norms = state.get("norms")
        self.frozen = None
        if state.get("frozen") is not None:
            self.frozen = [torch.zeros(g.size, dtype=torch.bool) for g in self.cost.groups]
            for mask, dead in zip(self.frozen, state["frozen"], strict=True):
                mask[dead] = True
