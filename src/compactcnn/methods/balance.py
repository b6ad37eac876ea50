"""How lam is shared between layers: a per-group multiplier on the proximal step.

Group lasso with the usual sqrt(scalars per neuron) weight presses a neuron by what it owns,
not by what removing it saves: on Caffe's LeNet a conv1 filter owns 26 scalars but feeds 1,250
of conv2's, so one global lam empties the fully connected layers long before it touches conv1.
A balance re-weights each group's threshold from the cost model's marginal saving of one more
dead neuron in the budget's own metric(s) (parameters and/or FLOPs, each as a share of the
dense model's, summed), so that lam trades accuracy against the quantity the budget counts:

- ``none``: the plain weight, sqrt(scalars the neuron owns);
- ``sqrt-cost``: sqrt(saving), the same rule with everything the neuron carries (its inputs to
  the next layer included) in place of what it owns;
- ``cost``: the saving itself, the linear price a Lagrangian of the budget would put on it;
- ``per-metric``: each metric of the budget priced by its own rule (parameters by ``none``,
  FLOPs by ``sqrt-cost``, each rule's measured best alone) under its own multiplier, which
  the controller moves by that metric's own distance to the budget: a Lagrangian with one
  multiplier per constraint (:func:`metric_weights`).

The multipliers are normalised so that the mean threshold over all neurons is unchanged, so a
lam means about the same size of step whichever balance is chosen (on average: the mixed
price of ``per-metric`` spreads wider, so a joint budget's lam starts lower,
``TrainConfig._resolve_lam``). Which rule a run gets by
default depends on its budget (``TrainConfig._resolve_balance``): what a neuron owns tracks
its parameters, not its FLOPs.
"""

from __future__ import annotations

import torch

from compactcnn.methods.budget import METRICS, Budget, CostModel

BALANCES = ("none", "sqrt-cost", "cost", "per-metric")
_POWER = {"sqrt-cost": 0.5, "cost": 1.0}
_OWN_RULE = {"params": "none", "flops": "sqrt-cost"}  # per-metric: each metric's price
ALL = "all"  # the one price of a rule that sums the budget's metrics


def metric_weights(cost: CostModel, budget: Budget, rule: str) -> dict[str, list[float]]:
    """The multipliers of each price the rule keeps apart: one per metric of the budget for
    ``per-metric``, one (``ALL``) for the other rules, whose price sums the metrics."""
    if rule != "per-metric":
        return {ALL: balance_weights(cost, budget, rule)}
    return {k: balance_weights(cost, Budget(**{k: getattr(budget, k)}), _OWN_RULE[k])
            for k in METRICS if getattr(budget, k) is not None}


def balance_weights(cost: CostModel, budget: Budget, rule: str) -> list[float]:
    """One multiplier per group of ``cost``, for the live network as it is now."""
    groups = cost.groups
    if rule == "none" or not groups:
        return [1.0] * len(groups)
    saving = sum(cost.per_neuron(k) / cost.dense[k]
                 for k in METRICS if getattr(budget, k) is not None)
    own = torch.tensor([sum(s.per_neuron for s in g.slices) for g in groups],
                       dtype=torch.float64).sqrt()
    wanted = saving.clamp(min=0) ** _POWER[rule]
    sizes = torch.tensor([g.size for g in groups], dtype=torch.float64)
    total = (sizes * wanted).sum()
    if total <= 0:  # nothing left to save anywhere: no layer is worth pressing harder
        return [1.0] * len(groups)
    scale = (sizes * own).sum() / total
    return (wanted * scale / own).tolist()
