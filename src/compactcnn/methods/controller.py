"""A controller on lam that steers the live network to a budget during sparse training.

The proximal step kills neurons at a rate set by lam, and which lam reaches a given size is
what users used to guess. Because dead neurons are exact zeros, the compact model's size is
known at every step (:class:`~compactcnn.methods.budget.CostModel`), so lam can be steered:
every ``interval`` steps the live size is compared with a planned path that falls from the
dense size to the budget along a cubic (fast at first, gentle near the end, like gradual
pruning schedules), and lam's multiplier goes up when the network is behind the path and down
when it is ahead. Neurons are not frozen while the controller runs: a neuron that the
gradient wants back may revive, and the controller then simply asks for more. At the same
interval it re-prices the layers (:mod:`~compactcnn.methods.balance`), since what one more dead
neuron saves changes as its neighbours die.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from compactcnn.methods.balance import balance_weights
from compactcnn.methods.budget import METRICS, Budget, CostModel


@dataclass
class LamController:
    """A multiplier of lam; callable as ``ProximalOptimizer(schedule=...)``."""

    cost: CostModel
    budget: Budget
    steps: int  # the step by which the path reaches the budget
    interval: int = 10
    gain: float = 1.15
    multiplier: float = 1.0
    bounds: tuple[float, float] = (1e-3, 1e5)
    balance: str = "none"
    weights: list[float] = field(default_factory=list)  # per group; ProximalOptimizer.weights

    def __post_init__(self) -> None:
        self.weights[:] = balance_weights(self.cost, self.budget, self.balance)

    def __call__(self, step: int) -> float:
        return self.multiplier

    def planned(self, step: int) -> dict[str, float]:
        """The size the path asks for at ``step``, per metric of the budget."""
        s = min(1.0, step / max(self.steps, 1))
        return {k: getattr(self.budget, k) + (1 - getattr(self.budget, k)) * (1 - s) ** 3
                for k in METRICS if getattr(self.budget, k) is not None}

    def update(self, step: int) -> dict[str, float] | None:
        """Compare with the path every ``interval`` steps; returns the live fractions then."""
        if step % self.interval:
            return None
        now = self.cost.fractions(self.cost.dead_counts())
        behind = any(now[k] > v for k, v in self.planned(step).items())
        factor = self.gain if behind else 1 / self.gain
        low, high = self.bounds
        self.multiplier = min(high, max(low, self.multiplier * factor))
        self.weights[:] = balance_weights(self.cost, self.budget, self.balance)
        return now

    def state_dict(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier, "weights": list(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        value = float(state["multiplier"])
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"lam multiplier {value} is not a positive number")
        self.multiplier = value
        if "weights" in state:  # in place: the optimizer holds this very list
            self.weights[:] = [float(w) for w in state["weights"]]
