"""ProximalOptimizer on real models: sparsity, coupled layers, optimizer state, schedules."""

from __future__ import annotations

import copy
import functools
import math
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactcnn.data import load_fashion_mnist
from compactcnn.errors import CompactCNNError
from compactcnn.models import create
from compactcnn.sparsity import (
    GroupLasso,
    LowRank,
    NeuronGroup,
    ProximalOptimizer,
    SparseGroupLasso,
    neuron_groups,
)
from compactcnn.sparsity.step_length import rule_for, step_length

MNIST_INPUT = torch.zeros(1, 1, 28, 28)
CIFAR_INPUT = torch.zeros(1, 3, 32, 32)


@functools.cache
def _groups_template(name: str, full: bool) -> list[NeuronGroup]:
    example = CIFAR_INPUT if name.startswith("resnet") else MNIST_INPUT
    return neuron_groups(create(name), example, full=full)


def regroup(groups: list[NeuronGroup], model: nn.Module) -> list[NeuronGroup]:
    """The same groups over another instance of the same architecture.

    Tracing the dependency graph is the slow part of building groups (seconds for resnet20),
    and the slices only need to point at the new instance's parameters.
    """
    params = dict(model.named_parameters())
    return [replace(g, slices=[replace(s, param=params[s.name]) for s in g.slices])
            for g in groups]


def model_and_groups(name: str, seed: int = 0, full: bool = False):
    torch.manual_seed(seed)
    model = create(name)
    return model, regroup(_groups_template(name, full), model)


def mlp(seed: int = 0) -> tuple[nn.Module, list[NeuronGroup]]:
    """One group, '0': 4 neurons of 7 scalars (6 weights and a bias); layer 2 classifies."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    return model, neuron_groups(model, torch.zeros(1, 6))


def pure(penalty):
    """The same map hidden behind a plain function, which takes the matrix round trip."""
    return lambda matrix, step: penalty(matrix, step)


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are small enough that a second thread buys little, and on a shared
    machine OpenMP's barriers make every step of a two-thread run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion() -> tuple[torch.Tensor, torch.Tensor]:
    return load_fashion_mnist(limit=512)


# ---------------------------------------------------------------------------------------------
# The in-place group-lasso path is the pure map
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,full", [
    ("lenet5", False),
    ("lenet5", True),  # fc3's input columns: a gathered (indexed) slice
    ("resnet20", False),  # groups span residual adds
])
@pytest.mark.parametrize("seed", [0, 1])
def test_in_place_group_lasso_equals_the_pure_map(name, full, seed):
    model, groups = model_and_groups(name, seed=seed, full=full)
    for p in model.parameters():  # neurons of very different norms, so some die and some not
        p.data.normal_(0, 0.1).mul_(torch.rand(p.shape[0]).view(-1, *[1] * (p.dim() - 1)))
    twin = copy.deepcopy(model)
    twin_groups = regroup(groups, twin)
    # lam so that one step's threshold is a third of the median norm of the widest group
    widest = max(groups, key=lambda g: g.size)
    length = 0.1 / (1 - 0.9)  # SGD's step per unit of a persistent gradient
    lam = float(widest.norms().median()) / 3 / math.sqrt(widest.matrix().shape[1]) / length
    fast = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                             groups, GroupLasso(lam))
    slow = ProximalOptimizer(torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9),
                             twin_groups, pure(GroupLasso(lam)))
    for _ in range(2):
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            a.grad = torch.randn_like(a) * 0.01
            b.grad = a.grad.clone()
        fast.step()
        slow.step()
    for (param_name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b), param_name
        for key, buffer in fast.state[a].items():
            assert torch.equal(buffer, slow.state[b][key]), (param_name, key)
    assert fast.neuron_counts() == slow.neuron_counts()
    assert 0 < fast.live_fraction() < 1
    for group in groups:  # the dead neurons' momentum is zero exactly where neuron_mask says
        dead = group.dead()
        for s in group.slices:
            reset = ~s.neuron_mask(~dead)
            assert torch.all(fast.state[s.param]["momentum_buffer"][reset] == 0.0), s.name


# ---------------------------------------------------------------------------------------------
# Training on Fashion-MNIST
# ---------------------------------------------------------------------------------------------

def train(model, opt, images, labels, steps: int, batch: int = 64) -> list[float]:
    losses = []
    for k in range(steps):
        start = (k * batch) % len(images)
        x, y = images[start:start + batch], labels[start:start + batch]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make_base,lam,reset,kept", [
    # SGD's step length is lr / (1 - momentum) = 0.5 here
    (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), 0.002, ["momentum_buffer"], []),
    # Adam's step length is lr / sqrt(v_hat) per neuron, some hundred times lr here
    (lambda p: torch.optim.Adam(p, lr=2e-3), 1e-3, ["exp_avg"], ["exp_avg_sq"]),
])
def test_training_lenet5_kills_neurons_and_zeroes_their_momentum(fashion, make_base, lam, reset,
                                                                  kept):
    images, labels = fashion
    model, groups = model_and_groups("lenet5")
    opt = ProximalOptimizer(make_base(model.parameters()), groups, GroupLasso(lam))
    losses = train(model, opt, images, labels, steps=40)

    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    fc3 = model.fc3
    dead = (fc3.weight == 0).all(dim=1) & (fc3.bias == 0)
    assert 0 < int(dead.sum()) < fc3.out_features
    assert opt.neuron_counts()["fc3"] == (int((~dead).sum()), int(dead.sum()))
    for p in (fc3.weight, fc3.bias):
        for key in reset:
            state = opt.state[p][key]
            assert torch.all(state[dead] == 0.0), key
            assert state[~dead].abs().sum() > 0, key
        for key in kept:  # second moments survive death: see the revival test below
            assert opt.state[p][key][dead].abs().sum() > 0, key
    for group in groups:
        dead = group.dead()
        for s in group.slices:
            for key in reset:
                assert torch.all(opt.state[s.param][key].movedim(s.dim, 0)[dead] == 0.0)


def test_other_penalties_train_through_the_matrix_round_trip(fashion):
    images, labels = fashion
    model, groups = model_and_groups("lenet5")
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), groups,
                            SparseGroupLasso(0.001, 0.0005))
    losses = train(model, opt, images, labels, steps=20)
    assert sum(losses[-5:]) < sum(losses[:5]) - 1
    assert (model.fc3.weight == 0).float().mean() > 0.2  # sparse within live neurons

    model, groups = model_and_groups("lenet5")
    convs = groups[:2]  # an SVD of fc3's 500 x 801 matrix every step would dominate the test
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), convs,
                            LowRank(0.05))
    losses = train(model, opt, images, labels, steps=20)
    assert sum(losses[-5:]) < sum(losses[:5]) - 1
    assert torch.linalg.matrix_rank(convs[0].matrix()) < convs[0].size


# ---------------------------------------------------------------------------------------------
# Coupled layers
# ---------------------------------------------------------------------------------------------

def test_resnet20_group_across_a_residual_add_dies_in_every_layer():
    model, groups = model_and_groups("resnet20")
    coupled = next(g for g in groups if g.name == "conv1")
    convs = [name for name in coupled.layers if isinstance(model.get_submodule(name), nn.Conv2d)]
    assert len(convs) >= 4  # conv1 and the last conv of every block that adds onto it

    victim = 3
    for s in coupled.slices:  # make one neuron small in every coupled parameter
        s.param.data.movedim(s.dim, 0)[victim] *= 1e-3
    norms = coupled.norms()
    t = float(norms[victim]) * 1.01
    assert float(norms.sort().values[1]) > 2 * t  # every other neuron survives
    lam = t / (0.1 / (1 - 0.9)) / math.sqrt(coupled.matrix().shape[1])  # lr / (1 - momentum)
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                            [coupled], GroupLasso(lam))
    opt.step()
    for s in coupled.slices:
        assert torch.all(s.param.movedim(s.dim, 0)[victim] == 0.0), s.name
    for name in convs:
        weight = model.get_submodule(name).weight
        assert torch.all(weight[victim] == 0.0), name
        assert torch.all(weight.flatten(1).norm(dim=1).ne(0).sum() == coupled.size - 1), name
    assert opt.neuron_counts() == {"conv1": (coupled.size - 1, 1)}


# ---------------------------------------------------------------------------------------------
# Revival is decided by the gradient against the threshold
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grad_norm,revives", [(1.0, False), (100.0, True)])
def test_a_dead_neuron_revives_only_when_the_gradient_beats_the_penalty(grad_norm, revives):
    model, (group,) = mlp()
    fc1 = model[0]
    with torch.no_grad():
        fc1.weight[0] = 0
        fc1.bias[0] = 0
    lr, lam = 0.1, 0.1
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), [group],
                            GroupLasso(lam))
    threshold = lr / (1 - 0.9) * lam * math.sqrt(7)  # the persistent step: lr / (1 - momentum)
    direction = torch.randn(7)
    direction *= grad_norm / direction.norm()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    fc1.weight.grad[0], fc1.bias.grad[0] = direction[:6], direction[6]
    opt.step()

    neuron = torch.cat([fc1.weight[0], fc1.bias[:1]]).detach()
    if revives:
        assert neuron.norm() == pytest.approx(lr * grad_norm - threshold, rel=1e-5)
        assert torch.allclose(neuron / neuron.norm(), -direction / grad_norm, atol=1e-6)
    else:
        assert torch.all(neuron == 0.0)
        assert torch.all(opt.state[fc1.weight]["momentum_buffer"][0] == 0.0)
    assert bool(opt.state[fc1.weight]["momentum_buffer"][0].abs().sum() > 0) == revives
    assert opt.neuron_counts()["0"][1] == (0 if revives else 1)


@pytest.mark.parametrize("grad_norm,revives", [(1.0, False), (100.0, True)])
def test_under_adam_a_dead_neuron_keeps_its_second_moment_and_revives_with_a_small_step(
        grad_norm, revives):
    model, (group,) = mlp()
    fc1 = model[0]
    lr, lam = 0.01, 0.2
    opt = ProximalOptimizer(torch.optim.Adam(model.parameters(), lr=lr), [group],
                            GroupLasso(lam), schedule=lambda k: float(k >= 10))
    for _ in range(10):  # a history of unit gradients, without the penalty
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    with torch.no_grad():  # neuron 0 dies as the proximal step leaves it
        for p in (fc1.weight, fc1.bias):
            p[0] = 0
            opt.state[p]["exp_avg"][0] = 0
    direction = torch.randn(7)
    direction *= grad_norm / direction.norm()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    fc1.weight.grad[0], fc1.bias.grad[0] = direction[:6], direction[6]
    opt.step()

    # Adam's step from zero with exp_avg reset: lr * m_hat / (sqrt(v_hat) + eps), m = 0.1 g
    v = torch.cat([opt.state[fc1.weight]["exp_avg_sq"][0], opt.state[fc1.bias]["exp_avg_sq"][:1]])
    v_hat, m_hat = v / (1 - 0.999 ** 11), 0.1 * direction / (1 - 0.9 ** 11)
    after_base = -lr * m_hat / (v_hat.sqrt() + 1e-8)
    length = float(step_length(rule_for(opt.base), group, opt.param_groups[0], opt.state,
                               per_neuron=True)[0])
    assert length == pytest.approx(lr / (float(v_hat.mean().sqrt()) + 1e-8), rel=1e-6)
    threshold = length * lam * math.sqrt(7)
    neuron = group.matrix()[0]
    assert bool(after_base.norm() > threshold) == revives
    if revives:
        torch.testing.assert_close(neuron, after_base * (1 - threshold / after_base.norm()))
        assert neuron.abs().max() < lr  # not the ~3 lr per scalar of a reset second moment
    else:
        assert torch.all(neuron == 0.0)
    assert torch.all(opt.state[fc1.weight]["exp_avg_sq"][0] > 0)  # kept through death
    assert opt.neuron_counts()["0"][1] == (0 if revives else 1)


# ---------------------------------------------------------------------------------------------
# Step size, warm-up, schedules, LR schedulers
# ---------------------------------------------------------------------------------------------

def shrink_of_one_step(opt: ProximalOptimizer, group: NeuronGroup) -> torch.Tensor:
    before = group.norms()
    opt.step()
    return before - group.norms()


def test_the_prox_step_uses_the_lr_of_the_param_group_holding_the_group():
    model, (group,) = mlp()
    fc1, fc2 = model[0], model[2]
    base = torch.optim.SGD([{"params": fc1.parameters(), "lr": 0.01},
                            {"params": fc2.parameters(), "lr": 1.0}])
    opt = ProximalOptimizer(base, [group], GroupLasso(0.5))
    shrink = shrink_of_one_step(opt, group)
    expected = torch.full((4,), 0.01 * 0.5 * math.sqrt(7), dtype=torch.float64)
    torch.testing.assert_close(shrink, expected, rtol=1e-4, atol=1e-7)


def test_lr_scheduler_drives_the_wrapper_and_the_prox_step():
    model, (group,) = mlp()
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), [group],
                            GroupLasso(0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
        for k in range(3):
            lr = 0.005 * (1 + math.cos(math.pi * k / 4))
            assert opt.param_groups[0]["lr"] == pytest.approx(lr)
            assert opt.base.param_groups[0]["lr"] == pytest.approx(lr)
            shrink = shrink_of_one_step(opt, group)
            expected = torch.full((4,), lr * 0.1 * math.sqrt(7), dtype=torch.float64)
            torch.testing.assert_close(shrink, expected, rtol=1e-4, atol=1e-7)
            scheduler.step()


def test_warmup_ramps_lam_and_spares_step_zero():
    model, (group,) = mlp()
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [group],
                            GroupLasso(0.02), warmup_steps=4, schedule=lambda k: 2.0)
    factors, shrinks = [], []
    for _ in range(6):
        factors.append(opt.lam_factor())
        shrinks.append(float(shrink_of_one_step(opt, group).mean()))
    assert factors == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    unit = 0.1 * 0.02 * math.sqrt(7)
    assert shrinks == pytest.approx([f * unit for f in factors], rel=1e-3, abs=1e-12)
    assert opt.steps == 6

    huge = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [group],
                             GroupLasso(1e6), warmup_steps=10)
    huge.step()
    assert huge.neuron_counts()["0"] == (4, 0)
    huge.step()
    assert huge.neuron_counts()["0"] == (0, 4)


@settings(max_examples=30, deadline=None)
@given(warmup=st.integers(0, 12), steps=st.integers(0, 20), extra=st.floats(0, 10))
def test_lam_factor_is_linear_warmup_times_schedule(warmup, steps, extra):
    model, _ = mlp()
    seen = []
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [], GroupLasso(1.0),
                            warmup_steps=warmup, schedule=lambda k: seen.append(k) or extra)
    for _ in range(steps):
        opt.step()
    expected = (min(1.0, steps / warmup) if warmup else 1.0) * extra
    assert opt.lam_factor() == pytest.approx(expected)
    assert seen == list(range(steps)) + [steps]


def test_bad_schedule_value_is_refused():
    model, groups = mlp()
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), groups,
                            GroupLasso(1.0), schedule=lambda k: -1.0)
    with pytest.raises(CompactCNNError, match=r"schedule\(0\) returned -1"):
        opt.step()


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def test_state_dict_round_trip_gives_identical_subsequent_steps(fashion):
    images, labels = fashion
    model, groups = model_and_groups("lenet5")
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), groups,
                            GroupLasso(1.0), warmup_steps=6, min_neurons=5)
    with pytest.warns(UserWarning, match="min_neurons=5") as record:
        train(model, opt, images[:192], labels[:192], steps=8)
    assert len(record) == 3
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    assert saved_opt["proximal"] == {"steps": 8, "warned": ["conv1", "conv2", "fc3"]}

    twin, twin_groups = model_and_groups("lenet5", seed=1)
    twin.load_state_dict(saved_model)
    resumed = ProximalOptimizer(torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9),
                                twin_groups, GroupLasso(1.0), warmup_steps=6, min_neurons=5)
    resumed.load_state_dict(saved_opt)
    assert resumed.steps == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every group has already been warned about
        first = train(model, opt, images[192:], labels[192:], steps=4)
        second = train(twin, resumed, images[192:], labels[192:], steps=4)
    assert first == second
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)

    plain = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    plain.load_state_dict(opt.state_dict())  # the base alone can read the wrapper's checkpoint


# ---------------------------------------------------------------------------------------------
# min_neurons
# ---------------------------------------------------------------------------------------------

def test_min_neurons_keeps_the_largest_neurons_live_and_warns_once_per_group():
    model, groups = model_and_groups("lenet5")
    norms = {g.name: g.norms() for g in groups}
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), groups,
                            GroupLasso(1e6), min_neurons=5)
    with pytest.warns(UserWarning) as record:
        opt.step()
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 3
    assert all(f"group '{g.name}'" in m for g, m in zip(sorted(groups, key=lambda g: g.name),
                                                         messages, strict=True))
    for group in groups:
        live = ~group.dead()
        assert int(live.sum()) == 5
        assert set(live.nonzero().flatten().tolist()) == set(
            norms[group.name].topk(5).indices.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert all(live == 5 for live, _ in opt.neuron_counts().values())


@pytest.mark.parametrize("penalty", [GroupLasso(1e6), SparseGroupLasso(1e6, 1e6)])
def test_a_pinned_neuron_is_not_shrunk(penalty):
    """conv(x) + x on the network's input: the second convolution's neurons carry x whatever
    their rows, so compaction keeps them and shrinking them would win nothing. A penalty
    strong enough to kill everything else leaves their rows as the base step left them."""
    from tests.compaction_helpers import Net, Residual

    torch.manual_seed(0)
    model = Net([Residual(3, False), nn.Conv2d(3, 8, 3), nn.ReLU()], 8, 0,
                nn.AdaptiveAvgPool2d(1))
    groups = neuron_groups(model, (3, 6, 6))
    conv2 = next(g for g in groups if g.name == "body.0.conv2")
    assert conv2.pinned is not None and bool(conv2.pinned.all())
    base = torch.optim.SGD(model.parameters(), lr=0.1)  # no gradients: the prox step alone
    before = conv2.matrix().clone()
    ProximalOptimizer(base, groups, penalty, min_neurons=0).step()
    assert torch.equal(conv2.matrix(), before)
    assert all(bool(g.dead().all()) for g in groups if g is not conv2)


def test_min_neurons_above_a_group_size_keeps_the_whole_group():
    model, groups = mlp()
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), groups,
                            LowRank(1e6), min_neurons=10)
    before = groups[0].matrix()
    with pytest.warns(UserWarning, match=r"group '0': .* leave 0 of 4 .* keeping the 4 largest"):
        opt.step()
    assert torch.equal(groups[0].matrix(), before)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def test_groups_of_another_model_are_refused():
    model, _ = model_and_groups("lenet5")
    _, other_groups = model_and_groups("lenet5")
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CompactCNNError, match="the groups were built for another model: "
                                              "parameter 'conv1.weight' is not held"):
        ProximalOptimizer(base, other_groups, GroupLasso(1.0))


def test_a_group_parameter_missing_from_the_optimizer_is_named():
    model, groups = model_and_groups("lenet5")
    held = [p for name, p in model.named_parameters() if name != "conv2.bias"]
    with pytest.raises(CompactCNNError, match="parameter 'conv2.bias' of group 'conv2'"):
        ProximalOptimizer(torch.optim.SGD(held, lr=0.1), groups, GroupLasso(1.0))


@pytest.mark.parametrize("kwargs", [{"warmup_steps": -1}, {"min_neurons": 1.5}])
def test_bad_options_are_refused(kwargs):
    model, groups = mlp()
    with pytest.raises(CompactCNNError, match=next(iter(kwargs))):
        ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), groups, GroupLasso(1.0),
                          **kwargs)


def test_negative_lam_is_refused_before_the_optimizer_is_built():
    with pytest.raises(CompactCNNError, match="lam must be >= 0, got -1"):
        GroupLasso(-1)


def test_without_groups_it_is_the_base_optimizer(fashion):
    images, labels = fashion
    runs = []
    for wrap in (False, True):
        model, _ = model_and_groups("lenet5")
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if wrap:
            opt = ProximalOptimizer(opt, [], GroupLasso(1.0))
        runs.append((train(model, opt, images, labels, steps=3), list(model.parameters())))
    (losses_a, params_a), (losses_b, params_b) = runs
    assert losses_a == losses_b
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    assert ProximalOptimizer(torch.optim.SGD(params_a, lr=0.1), [], LowRank(1)).live_fraction() == 1
