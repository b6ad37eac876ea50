"""The layer balance: per-group multipliers of lam, priced by what one more dead neuron saves."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactcnn import models
from compactcnn.methods.balance import BALANCES, balance_weights, metric_weights
from compactcnn.methods.budget import Budget, CostModel
from compactcnn.methods.controller import GAIN, LamController
from compactcnn.methods.selection import kill
from compactcnn.sparsity import GroupLasso, ProximalOptimizer, neuron_groups

SHAPES = {"lenet5": (1, 28, 28), "vgg_small": (1, 16, 16), "resnet20": (3, 16, 16)}


def _cost(name: str) -> CostModel:
    torch.manual_seed(0)
    shape = SHAPES[name]
    model = models.create(name, in_channels=shape[0], input_size=shape[1])
    return CostModel(model, shape, neuron_groups(model, shape))


def _own(cost: CostModel) -> torch.Tensor:
    return torch.tensor([sum(s.per_neuron for s in g.slices) for g in cost.groups],
                        dtype=torch.float64).sqrt()


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("rule, power", [("sqrt-cost", 0.5), ("cost", 1.0)])
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_thresholds_follow_the_saving_and_keep_their_mean(name, rule, power, data):
    cost = _cost(name)
    budget = data.draw(st.sampled_from([Budget(params=0.1), Budget(flops=0.2), Budget(0.1, 0.3)]))
    masks = [torch.tensor(data.draw(st.lists(st.booleans(), min_size=g.size, max_size=g.size)))
             for g in cost.groups]
    kill(cost.groups, [m & (torch.arange(len(m)) > 0) for m in masks])
    weights = torch.tensor(balance_weights(cost, budget, rule), dtype=torch.float64)
    own = _own(cost)
    saving = sum(cost.per_neuron(k) / cost.dense[k]
                 for k in ("params", "flops") if getattr(budget, k) is not None)
    thresholds = weights * own  # what the group-lasso threshold is proportional to
    ratio = thresholds / saving ** power
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9)
    sizes = torch.tensor([g.size for g in cost.groups], dtype=torch.float64)
    assert (sizes * thresholds).sum() == pytest.approx(float((sizes * own).sum()), rel=1e-9)


def test_none_is_the_plain_weight_and_cost_presses_lenets_conv1_hardest():
    cost = _cost("lenet5")
    assert balance_weights(cost, Budget(params=0.1), "none") == [1.0] * len(cost.groups)
    # conv1 owns 26 scalars per filter but feeds 1,250 of conv2's: priced by saving it is
    # pressed far harder than by ownership, and fc3 (owns 801, feeds 10) less.
    by_name = dict(zip([g.name for g in cost.groups],
                       balance_weights(cost, Budget(params=0.1), "cost"), strict=True))
    assert by_name["conv1"] > 5 * by_name["fc3"]
    assert sorted(BALANCES) == ["cost", "none", "per-metric", "sqrt-cost"]


def _optimizer(model, lam):
    groups = neuron_groups(model, (1, 28, 28))
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    return ProximalOptimizer(base, groups, GroupLasso(lam)), groups


def test_a_group_weight_scales_lam_for_that_group_alone():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    init = models.create("lenet5").state_dict()
    after = {}
    for key, lam, weights in (("2lam", 2e-3, None), ("lam", 1e-3, None), ("none", 0.0, None),
                              ("weighted", 1e-3, [2.0, 1.0, 0.0])):
        model = models.create("lenet5")
        model.load_state_dict(init)
        opt, groups = _optimizer(model, lam)
        opt.weights = weights
        model(x).square().mean().backward()
        opt.step()
        after[key] = {g.name: g.matrix() for g in groups}
    w = after["weighted"]
    assert torch.equal(w["conv1"], after["2lam"]["conv1"])
    assert torch.equal(w["conv2"], after["lam"]["conv2"])
    assert torch.equal(w["fc3"], after["none"]["fc3"])
    assert not torch.equal(w["conv1"], after["lam"]["conv1"])


def test_the_controller_reprices_and_its_weights_survive_a_checkpoint():
    cost = _cost("lenet5")
    controller = LamController(cost, Budget(params=0.1), steps=100, balance="cost")
    held = controller.weights
    before = list(held)
    kill(cost.groups, [torch.arange(g.size) < g.size // 2 for g in cost.groups])
    controller.update(10)
    assert held is controller.weights and held != before
    state = controller.state_dict()
    other = LamController(cost, Budget(params=0.1), steps=100, balance="cost")
    other.weights[:] = [1.0] * len(other.weights)
    other.load_state_dict(state)
    assert other.weights == held


@pytest.mark.parametrize("budget, rule", [(Budget(params=0.1), "none"),
                                          (Budget(flops=0.2), "sqrt-cost")])
def test_per_metric_under_one_metric_is_that_metrics_own_rule(budget, rule):
    cost = _cost("lenet5")
    kill(cost.groups, [torch.arange(g.size) < g.size // 3 for g in cost.groups])
    ours, named = (LamController(cost, budget, steps=100, balance=b) for b in ("per-metric", rule))
    for step in (0, 10, 20):
        ours.update(step)
        named.update(step)
        assert ours.weights == named.weights and ours.multiplier == named.multiplier


@pytest.mark.parametrize("name", ["lenet5", "vgg_small"])
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_per_metric_moves_each_metrics_multiplier_by_that_metric_alone(name, data):
    """A Lagrangian with one multiplier per constraint: a metric behind its path raises its
    own multiplier, one ahead lowers it, whatever the other does, and each group's weight is
    the prices mixed by the multipliers, so the mean threshold stays where lam puts it."""
    cost = _cost(name)
    budget = Budget(params=data.draw(st.sampled_from([0.05, 0.1, 0.3])),
                    flops=data.draw(st.sampled_from([0.1, 0.2, 0.5])))
    c = LamController(cost, budget, steps=100, balance="per-metric")
    drawn = [torch.tensor(data.draw(st.lists(st.booleans(), min_size=g.size, max_size=g.size)))
             for g in cost.groups]
    kill(cost.groups, [d & (torch.arange(len(d)) > 0) for d in drawn])
    step = data.draw(st.sampled_from([0, 20, 50, 90]))
    ahead = cost.fractions(cost.dead_counts())  # no norm was read before: none counted falling
    planned = c.planned(step + c.horizon)
    c.update(step)
    for k in ("params", "flops"):
        assert c.multipliers[k] == pytest.approx(GAIN if ahead[k] > planned[k] else 1 / GAIN)
    prices = metric_weights(cost, budget, "per-metric")
    mu = c.multipliers
    mixed = [(mu["params"] * p + mu["flops"] * f) / (mu["params"] + mu["flops"])
             for p, f in zip(prices["params"], prices["flops"], strict=True)]
    assert c.weights == pytest.approx(mixed, rel=1e-12)
    assert c.multiplier == pytest.approx((mu["params"] + mu["flops"]) / 2)
    sizes, own = torch.tensor([g.size for g in cost.groups], dtype=torch.float64), _own(cost)
    weights = torch.tensor(c.weights, dtype=torch.float64)
    assert (sizes * weights * own).sum() == pytest.approx(float((sizes * own).sum()), rel=1e-9)


def test_per_metric_presses_lenets_convolutions_once_its_parameters_are_met():
    """Under a joint budget on LeNet, with fc3 emptied (93% of the parameters, 17% of the
    FLOPs) the parameters are ahead and the FLOPs behind: the parameters' multiplier falls,
    so the FLOPs' price (what a neuron saves in FLOPs) takes over, and the convolutions are
    pressed harder than what is left of fc3. One multiplier for both, as under ``none``,
    would rise for both and press every neuron alike."""
    cost = _cost("lenet5")
    kill(cost.groups, [torch.arange(g.size) < (490 if g.name == "fc3" else 0)
                       for g in cost.groups])
    joint = Budget(params=0.1, flops=0.2)
    c, plain = (LamController(cost, joint, steps=1000, balance=b) for b in ("per-metric", "none"))
    c.update(0)
    plain.update(0)
    assert c.multipliers == {"params": pytest.approx(1 / GAIN), "flops": pytest.approx(GAIN)}
    by_name = dict(zip([g.name for g in cost.groups], c.weights, strict=True))
    assert by_name["conv1"] > by_name["conv2"] > by_name["fc3"]
    assert plain.multiplier == GAIN and plain.weights == [1.0] * len(cost.groups)


def test_a_checkpoint_from_before_multipliers_per_metric_loads_into_each():
    cost = _cost("lenet5")
    c = LamController(cost, Budget(params=0.1, flops=0.2), steps=100, balance="per-metric")
    c.load_state_dict({"multiplier": 3.0, "weights": list(c.weights), "norms": None,
                       "frozen": None})
    assert c.multipliers == {"params": 3.0, "flops": 3.0} and c.multiplier == 3.0
    twin = LamController(cost, Budget(params=0.1, flops=0.2), steps=100, balance="per-metric")
    c.multipliers["flops"] = 5.0
    twin.load_state_dict(c.state_dict())
    assert twin.multipliers == {"params": 3.0, "flops": 5.0}
    with pytest.raises(ValueError, match="multipliers"):
        LamController(cost, Budget(params=0.1), steps=100, balance="per-metric").load_state_dict(
            c.state_dict())
