"""Compaction's rules one case at a time: constants folded exactly or kept with the reason,
normalisations across neurons, grouped convolutions, and the neuron groups it relies on."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactcnn import models
from compactcnn.errors import CompactCNNError
from compactcnn.sparsity import neuron_groups
from compactcnn.surgery import compact
from compactcnn.surgery.outcome import (
    KEPT_ACROSS,
    KEPT_CONSTANT,
    KEPT_GROUPED,
    KEPT_OUTPUT,
    KEPT_TIED,
)
from tests.compaction_helpers import (
    Concat,
    Net,
    Residual,
    assert_report_consistent,
    dead_with_bias,
    max_diff,
    randomize_norms,
)

# --- constants: fold exactly or keep, and say why ----------------------------------------------


def test_a_constant_through_relu_into_a_linear_is_folded():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6 * 3 * 3, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    dead_with_bias(model[0], [1, 4], 0.7)  # emits relu(0.7) everywhere
    dead_with_bias(model[4], [2], -0.4)   # emits relu(-0.4) = 0: plainly removed
    small, report = compact(model, torch.randn(2, 2, 8, 8))
    conv, fc = report.groups
    assert (conv.dead, conv.removed, conv.folded, dict(conv.kept)) == (2, 2, 2, {})
    assert (fc.dead, fc.removed, fc.folded, dict(fc.kept)) == (1, 1, 0, {})
    assert small[0].out_channels == 4 and small[4].in_features == 4 * 3 * 3
    assert max_diff(model, small, (2, 8, 8)) <= 1e-6


def test_a_constant_into_a_linear_without_bias_creates_one():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4, bias=False), nn.ReLU(),
                          nn.Linear(4, 2)).eval()
    dead_with_bias(model[0], [0, 3], 1.5)
    small, report = compact(model, torch.randn(2, 5))
    assert report.groups[0].folded == 2 and report.groups[0].removed == 2
    assert small[2].bias is not None and small[2].in_features == 4
    assert max_diff(model, small, (5,)) <= 1e-6


def test_a_constant_into_a_zero_padded_conv_is_kept():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    dead_with_bias(model[0], [0, 2], 0.5)  # constant 0.5 shows as 0 in the padding
    dead_with_bias(model[0], [3], 0.0)     # a zero one goes anyway
    small, report = compact(model, torch.randn(2, 2, 6, 6))
    g = report.groups[0]
    assert (g.dead, g.removed, g.folded) == (3, 1, 0)
    assert g.kept == Counter({KEPT_CONSTANT: 2})
    assert "cannot be folded" in KEPT_CONSTANT and "cannot be folded" in report.format()
    assert small[0].out_channels == 4
    assert max_diff(model, small, (2, 6, 6)) <= 1e-6


def test_a_constant_into_an_unpadded_conv_is_folded():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2, bias=False),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).eval()
    dead_with_bias(model[0], [1, 2], 0.5)
    small, report = compact(model, torch.randn(2, 2, 8, 8))
    assert report.groups[0].folded == 2 and report.groups[0].removed == 2
    assert small[2].bias is not None and small[2].in_channels == 3
    assert max_diff(model, small, (2, 8, 8)) <= 1e-6


def test_a_batchnorm_beta_is_a_constant_folded_into_the_linear():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    randomize_norms(model, 5)
    with torch.no_grad():
        model[0].weight[[0, 3]] = 0.0  # BN turns 0 into beta - gamma * mean / std
        model[1].bias[[0, 3]] = torch.tensor([0.8, 1.3])
        model[1].running_mean[[0, 3]] = torch.tensor([-0.2, 0.1])
    small, report = compact(model, torch.randn(2, 2, 6, 6))
    g = report.groups[0]
    assert (g.dead, g.removed, g.folded, dict(g.kept)) == (2, 2, 2, {})
    assert small[1].num_features == 2 and small[4].in_features == 32
    assert max_diff(model, small, (2, 6, 6)) <= 1e-6


@pytest.mark.parametrize("beta", [0.0, 0.8])
def test_a_neuron_killed_through_its_batchnorm_scale_is_removed(beta):
    """Network slimming kills a neuron through gamma alone: its conv row stays non-zero, yet it
    emits beta (through ReLU): dropped if that is zero, folded into a linear consumer's bias
    otherwise, and kept, with the reason, before a zero-padded convolution."""
    torch.manual_seed(13)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    randomize_norms(model, 13)
    with torch.no_grad():
        model[1].weight[[1, 2]] = 0.0
        model[1].bias[[1, 2]] = beta
    assert bool(model[0].weight[[1, 2]].ne(0).any())
    small, report = compact(model, torch.randn(2, 2, 6, 6))
    g = report.groups[0]
    assert (g.dead, g.removed, g.folded, dict(g.kept)) == (2, 2, 2 if beta else 0, {})
    assert small[0].out_channels == 2 and small[1].num_features == 2
    assert max_diff(model, small, (2, 6, 6)) <= 1e-6

    padded = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.Conv2d(4, 3, 3, padding=1), nn.Flatten(), nn.Linear(48, 2)).eval()
    with torch.no_grad():
        padded[1].weight[[0]] = 0.0
        padded[1].bias[[0]] = beta
    small, report = compact(padded, torch.randn(2, 2, 6, 6))
    expected = {} if not beta else {KEPT_CONSTANT: 1}
    assert (report.groups[0].removed, dict(report.groups[0].kept)) == (0 if beta else 1, expected)
    assert max_diff(padded, small, (2, 6, 6)) <= 1e-6


def test_a_zero_scale_norm_on_one_side_of_an_add_leaves_the_neuron_live():
    """A zero scale makes only its norm's output constant. Here bn2 zeroes channel 0 of the
    residual branch, but the add joins it to the concatenation's ``left`` channel 0, which
    reaches the add raw: the neuron is live, however constant (0 after ReLU, bias -10) the
    probe happens to see it. Without an add, conv -> BN(0, 0) -> ReLU -> conv, it is dead."""
    torch.manual_seed(14)
    model = Net([Concat(1, 2, 1, False), Residual(3, True)], 3, 0,
                nn.AdaptiveAvgPool2d(1)).eval()
    with torch.no_grad():
        model.body[0].left.weight.fill_(1.0)
        model.body[0].left.bias.fill_(-10.0)
        model.body[1].bn2.weight[0] = model.body[1].bn2.bias[0] = 0.0
    # The optimizer's and the budget's count agrees with compaction's: no neuron is dead.
    assert not any(bool(g.dead().any()) for g in neuron_groups(model, torch.randn(2, 1, 8, 8)))
    small, report = compact(model, torch.randn(2, 1, 8, 8))
    assert small.body[0].left.out_channels == 2 and small.body[1].conv2.out_channels == 3
    assert sum(g.dead for g in report.groups) == sum(g.removed for g in report.groups) == 0
    assert_report_consistent(model, small, report)
    assert max_diff(model, small, (1, 8, 8), scale=20.0) <= 1e-5

    plain = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).eval()
    randomize_norms(plain, 14)
    with torch.no_grad():
        plain[1].weight[0] = plain[1].bias[0] = 0.0
    assert neuron_groups(plain, torch.randn(2, 2, 6, 6))[0].dead().tolist() == [True] + [False] * 3
    small, report = compact(plain, torch.randn(2, 2, 6, 6))
    g = report.groups[0]
    assert (g.dead, g.removed, dict(g.kept)) == (1, 1, {})
    assert small[0].out_channels == 3 and small[3].in_channels == 3
    assert_report_consistent(plain, small, report)
    assert max_diff(plain, small, (2, 6, 6), scale=20.0) <= 1e-5


def test_a_sigmoid_gate_is_folded_into_the_linear():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 6), nn.Sigmoid(), nn.Linear(6, 3)).eval()
    dead_with_bias(model[0], [1, 2, 5], 0.0)  # all scalars 0, yet sigmoid(0) = 0.5
    small, report = compact(model, torch.randn(2, 5))
    g = report.groups[0]
    assert (g.dead, g.removed, g.folded) == (3, 3, 3)
    assert small[2].in_features == 3
    assert max_diff(model, small, (5,)) <= 1e-6


def test_a_constant_into_a_grouped_conv_is_kept():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2),
                          nn.Flatten(), nn.Linear(4 * 9, 3)).eval()
    dead_with_bias(model[0], [0], 0.5)
    small, report = compact(model, torch.randn(2, 2, 3, 3))
    assert report.groups[0].kept == Counter({KEPT_CONSTANT: 1})
    assert max_diff(model, small, (2, 3, 3)) <= 1e-6


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_a_normalisation_across_neurons_keeps_dead_neurons(norm):
    torch.manual_seed(8)
    across = nn.GroupNorm(2, 4) if norm == "group" else nn.LayerNorm([4, 4, 4])
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), across, nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3)).eval()
    dead_with_bias(model[0], [1, 3], 0.0)
    small, report = compact(model, torch.randn(2, 2, 4, 4))
    assert report.groups[0].kept == Counter({KEPT_ACROSS: 2})
    assert max_diff(model, small, (2, 4, 4)) == 0.0


class HandMadeNorm(nn.Module):
    """Divides by the mean over neurons in plain tensor code, where no module type shows it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.conv2(y / (1 + y.mean(1, keepdim=True))).mean((2, 3))


def test_what_no_local_rule_sees_is_caught_by_the_outputs():
    model = HandMadeNorm().eval()
    dead_with_bias(model.conv1, [1, 2], 0.0)
    small, report = compact(model, torch.randn(2, 2, 4, 4))
    assert report.groups[0].kept == Counter({KEPT_OUTPUT: 2})
    assert small.conv1.out_channels == 4
    assert max_diff(model, small, (2, 4, 4)) == 0.0


def test_a_depthwise_conv_on_the_input_keeps_its_neurons():
    """Its neurons are its input channels, which are the model's: they cannot go."""
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 16, 2)).eval()
    dead_with_bias(model[0], [1], None)
    # Nor does the optimizer's or the budget's count take it for dead (it is pinned).
    assert neuron_groups(model, torch.randn(2, 3, 4, 4))[0].dead().tolist() == [False] * 3
    small, report = compact(model, torch.randn(2, 3, 4, 4))
    assert report.groups[0].kept == Counter({KEPT_TIED: 1})
    assert max_diff(model, small, (3, 4, 4)) == 0.0


@settings(max_examples=25, deadline=None)
@given(zeroed=st.lists(st.integers(0, 2), max_size=2, unique=True),  # a layer keeps one
       on_input=st.booleans(), seed=st.integers(0, 2**16))
def test_dead_counts_what_compaction_removes_when_an_add_joins_the_input(zeroed, on_input,
                                                                       seed):
    """A residual block on the network's own input (``conv(x) + x``): zeroing its second
    convolution's neurons leaves their channels carrying x, so compaction keeps them, and
    ``dead()``, which the budget controller counts, must agree (it used to count them as
    removed). Behind a stem convolution the add joins two layers' outputs, the block's
    neurons couple with the stem's, and zeroing both removes them."""
    torch.manual_seed(seed)
    body = [Residual(3, False)] if on_input else [nn.Conv2d(3, 3, 1), Residual(3, False)]
    model = Net(body, 3, 0, nn.AdaptiveAvgPool2d(1)).eval()
    block = model.body[-1]
    for layer in [block.conv2] + ([] if on_input else [model.body[0]]):
        dead_with_bias(layer, zeroed, 0.0)
    example = torch.randn(2, 3, 6, 6)
    groups = neuron_groups(model, example)
    counted = sum(int(g.dead().sum()) for g in groups if "conv2" in " ".join(g.layers)
                  or g.name == "body.0")
    small, report = compact(model, example)
    removed = sum(g.removed for g in report.groups)
    assert counted == removed == (0 if on_input else len(zeroed))
    assert max_diff(model, small, (3, 6, 6)) <= 1e-5


class ChannelShuffle(nn.Module):
    """ShuffleNet's shuffle: a reshape torch-pruning cannot follow, past which conv1's group is
    incomplete, so compaction keeps its dead neurons."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(torch.relu(self.conv2(y)).mean((2, 3)))


def _mixing(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm, nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(96, 3))


KEEPERS = {  # model, input shape: each keeps dead neurons for a reason other than constants
    "group norm": (lambda: _mixing(nn.GroupNorm(2, 4)), (2, 4, 4)),
    "layer norm": (lambda: _mixing(nn.LayerNorm([4, 4, 4])), (2, 4, 4)),
    "channel shuffle": (ChannelShuffle, (2, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(KEEPERS))
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_dead_counts_what_compaction_removes_whatever_keeps_the_rest(name, data):
    """``dead()`` is what the budget controller, the cost model and the selections count: it
    must be what compaction removes. Normalisations across channels and channel shuffles keep
    dead neurons; ``dead()`` used to count them all."""
    build, shape = KEEPERS[name]
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    _assert_dead_is_removed(build().eval(), torch.randn(2, *shape), data)


@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_dead_counts_what_compaction_removes_in_alexnet(data):
    """Local response normalisation (conv1, conv2) and the two towers' grouped convolutions,
    which remove as many dead neurons from each half as from the half with fewest (conv3,
    conv4): ``dead()`` used to count conv1's and conv3's all."""
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    model = models.create("alexnet", num_classes=10, input_size=67).eval()
    _assert_dead_is_removed(model, torch.randn(2, 3, 67, 67), data)


def _assert_dead_is_removed(model: nn.Module, example: torch.Tensor, data) -> None:
    picks = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    for group in neuron_groups(model, example):
        dead = torch.rand(group.size, generator=picks) < data.draw(st.floats(0.0, 0.9))
        dead[data.draw(st.integers(0, group.size - 1))] = False  # a layer keeps one anyway
        matrix = group.matrix()
        matrix[dead] = 0.0
        group.write(matrix)
    counted = {g.name: int(g.dead().sum()) for g in neuron_groups(model, example)}
    small, report = compact(model, example)
    assert counted == {g.name: g.removed for g in report.groups}
    assert report.max_abs_output_diff <= 1e-5


# --- grouped convolutions ----------------------------------------------------------------------


def test_a_small_grouped_model_keeps_equal_groups():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1, groups=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    dead_with_bias(model[0], [0, 1, 2, 5], 0.0)  # 3 in the first half, 1 in the second
    small, report = compact(model, torch.randn(2, 1, 5, 5))
    g = report.groups[0]
    assert (g.removed, g.kept) == (2, Counter({KEPT_GROUPED: 2}))
    assert small[2].in_channels == 6 and small[2].weight.shape[1] == 3
    assert max_diff(model, small, (1, 5, 5)) <= 1e-6


# --- neuron groups the compaction relies on ----------------------------------------------------


def test_concatenation_before_a_flatten_is_not_coupled_index_for_index():
    """torch-pruning leaves such a concatenation unmapped; groups.py maps it."""
    model = Net([Concat(2, 3, 2, False)], 5 * 4 * 4, 0, nn.Identity()).eval()
    groups = {g.name: g for g in neuron_groups(model, torch.randn(1, 2, 4, 4), full=True)}
    assert groups["body.0.left"].layers == ("body.0.left",)
    assert groups["body.0.right"].layers == ("body.0.right",)
    fc = next(s for s in groups["body.0.right"].slices if s.name == "fc2.weight")
    assert fc.index.tolist() == [list(range(48, 64)), list(range(64, 80))]
    assert groups["body.0.left"].matrix().shape == (3, 3 + 3 * 16)


def test_a_norm_after_a_concatenation_gives_each_branch_its_own_channels():
    model = Net([Concat(2, 3, 2, True)], 5, 0, nn.AdaptiveAvgPool2d(1)).eval()
    groups = {g.name: g for g in neuron_groups(model, torch.randn(1, 2, 4, 4))}
    bn = {g: next(s for s in groups[g].slices if s.name == "body.0.bn.weight")
          for g in ("body.0.left", "body.0.right")}
    assert bn["body.0.left"].index.flatten().tolist() == [0, 1, 2]
    assert bn["body.0.right"].index.flatten().tolist() == [3, 4]
    assert groups["body.0.right"].matrix().shape == (2, 18 + 1 + 2)


def test_a_grouped_conv_with_one_neuron_per_group_is_refused_clearly():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 3, groups=2), nn.Flatten(),
                          nn.Linear(2, 3))
    with pytest.raises(CompactCNNError, match="groups == out_channels"):
        neuron_groups(model, torch.randn(1, 1, 3, 3))
    with pytest.raises(CompactCNNError, match="groups == out_channels"):
        compact(model, torch.randn(1, 1, 3, 3))


