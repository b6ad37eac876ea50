"""The layer balance: per-group multipliers of lam, priced by what one more dead neuron saves."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactcnn import models
from compactcnn.methods.balance import BALANCES, balance_weights
from compactcnn.methods.budget import Budget, CostModel
from compactcnn.methods.controller import LamController
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
    assert sorted(BALANCES) == ["cost", "none", "sqrt-cost"]


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
