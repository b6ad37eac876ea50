"""Compaction of random CNNs: conv/BN/ReLU/pool, residual adds, concatenations, grouped and
depthwise convolutions, with random dead patterns and constants, always exact."""

from __future__ import annotations

import copy

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from compactcnn.surgery import compact
from compactcnn.surgery.outcome import KEPT_ACROSS, KEPT_OUTPUT
from tests.compaction_helpers import (
    Concat,
    Net,
    Residual,
    assert_report_consistent,
    assert_unchanged,
    count,
    expected_widths,
    kill,
    max_diff,
    randomize_norms,
    snapshot,
    widths,
)

BLOCKS = ["conv", "res", "cat", "group", "dw", "pool"]


@st.composite
def random_cnns(draw):
    """A tiny CNN from conv/BN/ReLU/pool, residual adds, concatenations, grouped (2) and
    depthwise convolutions, with a flatten or a global pool before one or two linear layers."""
    c = draw(st.integers(1, 3))
    side = draw(st.integers(5, 8))
    shape = (c, side, side)
    body: list[nn.Module] = []
    for kind in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4)):
        if kind == "conv" or (kind in ("res", "dw") and c < 2):
            out = draw(st.integers(2, 5))
            pad = draw(st.sampled_from([0, 1])) if side >= 3 else 1
            k = draw(st.sampled_from([1, 3])) if side >= 3 else 1
            body.append(nn.Conv2d(c, out, k, padding=pad, bias=draw(st.booleans())))
            side, c = side + 2 * pad - k + 1, out
            if draw(st.booleans()):
                body.append(nn.BatchNorm2d(c))
            body.append(draw(st.sampled_from([nn.ReLU, nn.ReLU, nn.Identity, nn.Sigmoid]))())
        elif kind == "res":
            body.append(Residual(c, draw(st.booleans())))
        elif kind == "cat":
            a, b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            body.append(Concat(c, a, b, draw(st.booleans())))
            c = a + b
        elif kind == "group":
            if c % 2:
                body += [nn.Conv2d(c, c + 1, 1), nn.ReLU()]
                c += 1
            out = 2 * draw(st.integers(2, 3))  # groups=2 with 2 or 3 neurons per group
            body.append(nn.Conv2d(c, out, 3, padding=1, groups=2, bias=draw(st.booleans())))
            if draw(st.booleans()):
                body.append(nn.BatchNorm2d(out))
            body.append(nn.ReLU())
            c = out
        elif kind == "dw":
            body.append(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=draw(st.booleans())))
            if draw(st.booleans()):
                body.append(nn.BatchNorm2d(c))
            body.append(nn.ReLU())
        elif kind == "pool" and side >= 2:
            body.append(draw(st.sampled_from([nn.MaxPool2d, nn.AvgPool2d]))(2))
            side //= 2
    if draw(st.booleans()):
        pool, flat = nn.AdaptiveAvgPool2d(1), c
    else:
        pool, flat = nn.Identity(), c * side * side
    hidden = draw(st.sampled_from([0, 5, 8]))
    return body, flat, hidden, pool, shape


# Issue 6 asks for >= 200 random architectures and dead patterns in CI.
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cnns(), st.sampled_from([0.3, 0.6, 1.0]), st.booleans(),
       st.integers(0, 2**16))
def test_random_cnns_compact_exactly(spec, fraction, constants, seed):
    body, flat, hidden, pool, shape = spec
    torch.manual_seed(seed)
    model = Net(copy.deepcopy(body), flat, hidden, pool)
    randomize_norms(model, seed)
    example = torch.randn(2, *shape)
    killed = kill(model, example, fraction, seed)
    assume(sum(killed.values()) > 0)  # every case kills something
    if constants:
        # Dead rows with a bias: a constant to fold or to keep, depending on the consumer.
        g = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                rows = m.weight.detach().flatten(1).eq(0).all(dim=1)
                m.bias.data[rows] = torch.randn(int(rows.sum()), generator=g)
    model.train(bool(seed % 2))
    before = snapshot(model)

    small, report = compact(model, example)

    assert_unchanged(model, before)
    assert small.training == bool(seed % 2)
    model.eval(), small.eval()
    assert report.max_abs_output_diff <= 1e-5
    assert max_diff(model, small, shape, seed=seed) <= 1e-5
    assert_report_consistent(model, small, report, killed)
    # Every layer's width, as worked out from the zeros and the rules alone.
    assert widths(small) == expected_widths(model, shape[0])
    # Nothing in these networks mixes neurons or hides from torch-pruning: a dead neuron goes,
    # or stays for a reason its consumer, an add with the live input, or its layer gives.
    assert not set(report.kept) & {KEPT_OUTPUT, KEPT_ACROSS}
    assert report.after.total_params == count(small)
    with torch.no_grad():
        assert small(torch.randn(1, *shape)).shape == (1, 3)
