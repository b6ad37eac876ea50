"""The lam controller: it sees the neurons on their way out, and its rate fits the path."""

from __future__ import annotations

import copy

import torch

from compactcnn import models
from compactcnn.files import checkpoint as checkpoint_file
from compactcnn.methods.budget import Budget, CostModel
from compactcnn.methods.controller import GAIN, INTERVAL, LamController
from compactcnn.methods.selection import SLACK, current_dead, greedy, kill
from compactcnn.sparsity import neuron_groups


def _controller(steps: int, start: int = 0) -> LamController:
    torch.manual_seed(0)
    model = models.create("lenet5")
    cost = CostModel(model, (1, 28, 28), neuron_groups(model, (1, 28, 28)))
    return LamController(cost, Budget(params=0.1), steps=steps, start=start)


def _scale_all_but_one(controller: LamController, factor: float) -> None:
    """Every neuron but the first of each layer shrinks by ``factor``, as under a strong lam."""
    with torch.no_grad():
        for g in controller.cost.groups:
            matrix = g.matrix()
            matrix[1:] *= factor
            g.write(matrix)


def test_neurons_on_their_way_out_count_as_gone():
    falling, still = _controller(1000), _controller(1000)
    for c in (falling, still):
        c.update(0)
    _scale_all_but_one(falling, 0.8)  # 20% per interval: zero well within the horizon
    assert falling.horizon * (1 - 0.8) / INTERVAL > 0.8
    falling.update(INTERVAL)
    still.update(INTERVAL)
    # Nothing is dead in either, but only the one whose neurons are falling is ahead of the path.
    assert falling.cost.dead_counts().sum() == 0
    assert still.multiplier == GAIN ** 2 and falling.multiplier == 1.0  # up, then down


def test_slowly_shrinking_neurons_are_not_counted_as_gone():
    c = _controller(1000)
    c.update(0)
    _scale_all_but_one(c, 0.999)  # at this rate zero lies far beyond the horizon
    c.update(INTERVAL)
    assert c.multiplier == GAIN ** 2


def test_a_restored_controller_decides_as_the_original():
    c = _controller(200)
    c.update(0)
    _scale_all_but_one(c, 0.8)
    twin = _controller(200)
    twin.cost.groups[:] = c.cost.groups  # same parameters, restored state
    twin.load_state_dict(copy.deepcopy(c.state_dict()))
    assert c.update(INTERVAL) == twin.update(INTERVAL)
    assert c.multiplier == twin.multiplier != 1.0


def test_lam_holds_and_the_path_waits_while_the_learning_rate_warms_up():
    c = _controller(1000, start=300)
    assert all(c.update(step) is None for step in range(300))
    assert c.multiplier == 1.0 and c.planned(299) == {"params": 1.0}
    assert c.update(300) is not None and c.multiplier == GAIN
    assert c.planned(1000) == {"params": 0.1}


def _meet_the_budget(c: LamController) -> list[torch.Tensor]:
    """Kill the lowest-norm neurons until the live network meets the budget, as lam would."""
    dead = greedy(c.cost, c.budget, [g.norms().cpu() for g in c.cost.groups])
    kill(c.cost.groups, dead)
    return dead


def _move_every_neuron(c: LamController) -> None:
    """What a base step does: every neuron moves, the dead ones too."""
    with torch.no_grad():
        for g in c.cost.groups:
            g.write(g.matrix() + 0.01)


def test_the_architecture_freezes_when_the_budget_is_met():
    c = _controller(1000)
    c.update(0)
    c.after_step(1)  # above the budget: it steers
    assert c.frozen is None and c(1) == c.multiplier > 0
    dead = _meet_the_budget(c)
    c.after_step(2)
    assert c(2) == 0.0  # lam stops
    _move_every_neuron(c)
    live_before = [g.matrix()[~d].clone() for g, d in zip(c.cost.groups, dead, strict=True)]
    c.after_step(3)
    for g, d, before in zip(c.cost.groups, dead, live_before, strict=True):
        assert bool((g.matrix()[d] == 0).all())  # the frozen dead stay exactly zero
        assert torch.equal(g.matrix()[~d], before)  # the survivors keep their step
    assert [m.tolist() for m in current_dead(c.cost.groups)] == [m.tolist() for m in dead]


def test_a_restored_controller_holds_the_same_frozen_neurons(tmp_path):
    c = _controller(1000)
    dead = _meet_the_budget(c)
    c.after_step(1)
    checkpoint_file.save(tmp_path / "ckpt", {"method": {"controller": c.state_dict()}})
    twin = _controller(1000)
    twin.cost.groups[:] = c.cost.groups
    twin.load_state_dict(checkpoint_file.load(tmp_path / "ckpt")["method"]["controller"])
    _move_every_neuron(twin)
    twin.after_step(2)
    assert twin(2) == 0.0
    assert [m.tolist() for m in current_dead(twin.cost.groups)] == [m.tolist() for m in dead]


def _ranked_controller(budget: float = 0.1) -> LamController:
    torch.manual_seed(0)
    model = models.create("lenet5")
    cost = CostModel(model, (1, 28, 28), neuron_groups(model, (1, 28, 28)), ranked=True)
    return LamController(cost, Budget(params=budget), steps=1000)


def _kill_live(group, count: int) -> None:
    live = (~group.dead()).nonzero().flatten()
    with torch.no_grad():
        matrix = group.matrix()
        matrix[live[:count]] = 0
        group.write(matrix)


def test_a_low_rank_run_steers_at_the_budget_and_freezes_once_it_overshoots():
    c = _ranked_controller()
    _meet_the_budget(c)  # within a neuron of it, priced at full rank: the weights are random
    assert -SLACK <= c.budget.excess(c.cost.fractions(c.cost.dead_counts(), full_rank=True))
    c.after_step(0)
    assert c.frozen is None and c(0) == c.multiplier > 0  # the penalties go on at the budget
    fc3 = c.cost.groups[2]  # LeNet's parameters live in fc3: a fifth of its survivors die
    _kill_live(fc3, int((~fc3.dead()).sum()) // 5)
    dead = current_dead(c.cost.groups)
    assert c.budget.excess(c.cost.fractions(c.cost.dead_counts(), full_rank=True)) < -SLACK
    c.after_step(1)
    assert c(1) == 0.0
    _move_every_neuron(c)  # the ranks, free after the freeze, may grow: the neurons stay dead
    c.after_step(2)
    assert [m.tolist() for m in current_dead(c.cost.groups)] == [m.tolist() for m in dead]


def test_a_low_rank_run_whose_budget_rests_on_ranks_keeps_steering():
    c = _ranked_controller()
    fc = max((m for _, m in c.cost.ranked()), key=lambda m: m.weight.numel())
    with torch.no_grad():
        u, v = torch.randn(fc.weight.shape[0], 1), torch.randn(1, fc.weight.shape[1])
        fc.weight.copy_(u @ v)  # fc3, 93% of LeNet's parameters, at rank one
    dead = c.cost.dead_counts()
    assert c.budget.met(c.cost.fractions(dead))  # met by the ranks...
    assert not c.budget.met(c.cost.fractions(dead, full_rank=True))  # ...not by the neurons
    c.after_step(0)
    assert c.frozen is None and c(0) == c.multiplier > 0


def test_one_neuron_beyond_the_budget_is_no_overshoot():
    c = _ranked_controller(budget=0.05)
    _meet_the_budget(c)
    dead = c.cost.dead_counts()

    def below(group: int, more: int) -> float:
        return c.budget.excess(c.cost.fractions(dead + more * torch.eye(len(dead))[group],
                                                full_rank=True))

    # A layer whose one neuron costs more than the slack (at 5% of LeNet, conv2's or fc3's).
    g = next(g for g in range(len(dead)) if below(g, 1) < -SLACK)
    _kill_live(c.cost.groups[g], 1)
    c.after_step(0)
    assert c.frozen is None and c(0) > 0
    _kill_live(c.cost.groups[g], int((~c.cost.groups[g].dead()).sum()) // 4)
    c.after_step(1)
    assert c(1) == 0.0
