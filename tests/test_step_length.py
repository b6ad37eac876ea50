"""The proximal step length under each base optimizer: lam means the same under all of them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactcnn.errors import CompactCNNError
from compactcnn.sparsity import GroupLasso, LowRank, ProximalOptimizer, neuron_groups
from compactcnn.sparsity.step_length import RULES, rule_for, step_length


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(seed: int = 0, hidden: int = 4, inputs: int = 6):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    return model, neuron_groups(model, torch.zeros(1, inputs))


def hyper_of(opt, group):
    return next(g for g in opt.param_groups if any(p is group.slices[0].param
                                                   for p in g["params"]))


def random_steps(opt, model, steps: int, scale: float = 1.0) -> None:
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * scale
        opt.step()


@pytest.mark.parametrize(("momentum", "dampening", "nesterov"),
                         [(0.0, 0.0, False), (0.9, 0.0, False), (0.5, 0.3, False),
                          (0.9, 0.0, True)])
def test_the_sgd_step_length_is_the_step_it_takes_under_a_persistent_gradient(
        momentum, dampening, nesterov):
    model, (group,) = mlp()
    sgd = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.03},
                           {"params": model[2].parameters(), "lr": 1.0}], momentum=momentum,
                          dampening=dampening, nesterov=nesterov)
    weight = model[0].weight
    gradient = torch.randn_like(weight)
    for _ in range(300):  # heavy-ball momentum reaches its steady step
        before = weight.detach().clone()
        for p in model.parameters():
            p.grad = gradient if p is weight else torch.zeros_like(p)
        sgd.step()
    moved = (before - weight.detach()) / gradient
    for per_neuron in (True, False):
        length = step_length(rule_for(sgd), group, hyper_of(sgd, group), sgd.state,
                             per_neuron=per_neuron)
        assert isinstance(length, float)
        assert moved == pytest.approx(torch.full_like(moved, length), rel=1e-4)


def test_the_adam_step_length_is_that_of_adam_with_one_second_moment_per_neuron():
    model, (group,) = mlp()
    adam = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    random_steps(adam, model, 5)
    fc1 = model[0]
    v = torch.cat([adam.state[fc1.weight]["exp_avg_sq"],
                   adam.state[fc1.bias]["exp_avg_sq"].unsqueeze(1)], dim=1) / (1 - 0.99 ** 5)
    expected = 0.01 / (v.mean(dim=1).sqrt() + 1e-6)
    length = step_length(rule_for(adam), group, adam.param_groups[0], adam.state,
                         per_neuron=True)
    torch.testing.assert_close(length, expected)
    whole = step_length(rule_for(adam), group, adam.param_groups[0], adam.state,
                        per_neuron=False)
    assert whole == pytest.approx(0.01 / (math.sqrt(float(v.mean())) + 1e-6), rel=1e-5)


def test_a_group_the_base_never_stepped_is_not_shrunk():
    model, (group,) = mlp()
    before = group.matrix()
    opt = ProximalOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), [group],
                            GroupLasso(10.0))
    opt.step()  # no gradients: Adam leaves every parameter alone, and so does the prox
    assert torch.equal(group.matrix(), before)


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.LBFGS(p),
    lambda p: torch.optim.SparseAdam(p),
    lambda p: torch.optim.Rprop(p),
    lambda p: torch.optim.NAdam(p),
])
def test_an_optimizer_without_a_step_length_rule_is_refused_by_name(make):
    model, groups = mlp()
    base = make(list(model.parameters()))
    with pytest.raises(CompactCNNError, match=f"from {type(base).__name__}; supported base "
                                              "optimizers: SGD, Adam, AdamW"):
        ProximalOptimizer(base, groups, GroupLasso(1.0))


def test_a_subclass_is_refused_since_it_may_change_the_update():
    class MyAdam(torch.optim.Adam):
        pass

    model, groups = mlp()
    with pytest.raises(CompactCNNError, match="from MyAdam"):
        ProximalOptimizer(MyAdam(model.parameters()), groups, GroupLasso(1.0))


# ---------------------------------------------------------------------------------------------
# One lam, six optimizers, one sparsity
# ---------------------------------------------------------------------------------------------

# Each at a learning rate it is commonly run with on a problem of this scale; SGD with and
# without heavy-ball momentum (which lengthens its step tenfold at 0.9 and lr 0.005).
BASES = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05),
    "SGD+momentum": lambda p: torch.optim.SGD(p, lr=0.005, momentum=0.9),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "Adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-2),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
}


def teacher_problem(n: int = 512, inputs: int = 10):
    """Regression onto a ReLU network of 6 hidden units whose inputs are only 4 of the 10."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, inputs, generator=g)
    w = torch.randn(6, 4, generator=g)
    y = F.relu(x[:, :4] @ w.T).sum(dim=1, keepdim=True)
    return x, y


def live_fraction_after_training(name: str, lam: float, steps: int = 400) -> float:
    x, y = teacher_problem()
    model, groups = mlp(hidden=24, inputs=10)
    opt = ProximalOptimizer(BASES[name](model.parameters()), groups, GroupLasso(lam),
                            warmup_steps=50)
    for k in range(steps):
        batch = slice((k * 64) % len(x), (k * 64) % len(x) + 64)
        opt.zero_grad()
        F.mse_loss(model(x[batch]), y[batch]).backward()
        opt.step()
    return opt.live_fraction()


def test_one_lam_gives_live_fractions_within_a_factor_of_two_under_every_optimizer():
    fractions = {name: live_fraction_after_training(name, lam=0.05) for name in BASES}
    assert set(RULES) >= {getattr(torch.optim, name.split("+")[0]) for name in BASES}
    assert 0 < min(fractions.values()) and max(fractions.values()) < 1, fractions
    assert max(fractions.values()) <= 2 * min(fractions.values()), fractions


# ---------------------------------------------------------------------------------------------
# Matrix penalties take one step length per group
# ---------------------------------------------------------------------------------------------

def test_low_rank_under_adam_shrinks_by_the_group_step_length():
    model, (group,) = mlp()
    twin = copy.deepcopy(model)
    (twin_group,) = neuron_groups(twin, torch.zeros(1, 6))
    opt = ProximalOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), [group],
                            LowRank(0.05))
    bare = torch.optim.Adam(twin.parameters(), lr=0.01)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    opt.step()
    bare.step()
    length = step_length(rule_for(bare), twin_group, bare.param_groups[0], bare.state,
                         per_neuron=False)
    assert isinstance(length, float) and length > 0.01  # Adam's first step: lr / |g| per unit
    expected = (torch.linalg.svdvals(twin_group.matrix()) - length * 0.05).clamp(min=0)
    torch.testing.assert_close(torch.linalg.svdvals(group.matrix()), expected)


def test_under_adam_the_reweighted_threshold_is_each_neurons_step_times_its_weight():
    """The in-place map with one step length per neuron applies the same reweighting as the
    pure map: a neuron's threshold is its own step * lam * sqrt(width) * (mean / norm)."""
    model, (group,) = mlp(hidden=6)
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    random_steps(adam, model, 3)
    penalty = GroupLasso(0.3, reweight=1.0)
    opt = ProximalOptimizer(adam, [group], penalty)
    lengths = step_length(rule_for(adam), group, adam.param_groups[0], adam.state,
                          per_neuron=True)
    matrix = group.matrix()
    norms = matrix.norm(dim=1)
    opt._prox(group, adam.param_groups[0], 1.0)
    t = lengths * penalty.threshold(matrix.shape[1], 1.0) * norms.mean() / norms
    expected = matrix * torch.where(norms > t, 1 - t / norms, 0.0).unsqueeze(1)
    torch.testing.assert_close(group.matrix(), expected)
    assert not torch.equal(expected, GroupLasso(0.3)(matrix, 1.0))
