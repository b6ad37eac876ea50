"""Factorisation: low-rank layers become two thinner layers, exactly, only where it pays.

Ranks are planted as products of random factors, so the rank is known and the factorised
model can be held to the formula ``groups * r * (fan-in + neurons per group) + bias``.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

from compactcnn import models
from compactcnn.cli import main
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile as io
from compactcnn.layers import Factorised
from compactcnn.sparsity import (
    GroupLasso,
    LowRank,
    ProximalOptimizer,
    make_penalty,
    neuron_groups,
)
from compactcnn.sparsity.penalties import GroupLowRank
from compactcnn.surgery import compact
from compactcnn.surgery.factorise import (
    FACTORISED,
    KEPT_NONFINITE,
    KEPT_OUTPUT,
    KEPT_RANK,
    factorise,
)


def _plant(layer: nn.Module, ranks: list[int], seed: int = 0) -> nn.Module:
    """Give each group of ``layer`` a weight block of the given rank (and a nonzero bias)."""
    g = torch.Generator().manual_seed(seed)
    w = layer.weight
    groups = len(ranks)
    neurons, fan_in = w.shape[0] // groups, w[0].numel()
    blocks = [torch.randn(neurons, r, generator=g) @ torch.randn(r, fan_in, generator=g) / fan_in
              for r in ranks]
    with torch.no_grad():
        w.copy_(torch.cat(blocks).reshape(w.shape))
        layer.bias.copy_(torch.randn(w.shape[0], generator=g))
    return layer


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item()


CASES = {  # layer, input shape, rank per group
    "linear": (lambda: nn.Linear(60, 40), (60,), [5]),
    "conv2d": (lambda: nn.Conv2d(6, 32, 3, stride=2, padding=2, dilation=2), (6, 11, 11), [4]),
    "grouped": (lambda: nn.Conv2d(8, 24, 3, padding=1, groups=2), (8, 7, 7), [3, 2]),
    "conv1d": (lambda: nn.Conv1d(5, 30, 4, stride=3, padding=1), (5, 20), [2]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_planted_rank_is_factorised_exactly_to_the_formula(case):
    make, shape, ranks = CASES[case]
    layer = _plant(make(), ranks)
    model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, *shape))  # materialise the lazy classifier

    small, report = factorise(model, shape)

    pair = small[0]
    assert isinstance(pair, Factorised) and pair.rank == max(ranks)
    groups, neurons = len(ranks), layer.weight.shape[0]
    fan_in = layer.weight[0].numel()
    want = groups * max(ranks) * (fan_in + neurons // groups) + neurons
    assert sum(p.numel() for p in pair.parameters()) == want
    entry = report.layers[0]
    assert (entry.outcome, entry.rank, entry.params_after) == (FACTORISED, max(ranks), want)
    assert report.before.total_params - report.after.total_params == \
        layer.weight.numel() + neurons - want
    if isinstance(layer, nn.Conv2d):
        for attr in ("kernel_size", "stride", "padding", "dilation", "groups"):
            assert getattr(pair.first, attr) == getattr(layer, attr)
        assert pair.second.kernel_size == (1, 1) and pair.second.groups == layer.groups
    assert _max_diff(model, small, torch.randn(8, *shape)) < 1e-5
    assert report.max_abs_output_diff < 1e-5
    assert isinstance(model[0], type(layer))  # the input model is left alone


def test_the_table_shows_the_rank_as_the_first_halfs_outputs():
    model = nn.Sequential(_plant(nn.Linear(60, 40), [5]), nn.ReLU(), nn.Linear(40, 3))
    _, report = factorise(model, (60,))
    rows = {r.name: r for r in report.after.layers}
    assert (rows["0.first"].input, rows["0.first"].output) == (60, 5)
    assert (rows["0.second"].input, rows["0.second"].output) == (5, 40)
    assert "0: rank 5 of 40" in report.format()


def test_a_rank_that_does_not_pay_stays_as_it_is():
    # Linear(10, 10): rank 5 costs 5 * (10 + 10) = 100 weights, the layer's own 100; rank 4 pays.
    model = nn.Sequential(_plant(nn.Linear(10, 10), [5]), nn.ReLU(),
                          _plant(nn.Linear(10, 10), [4], seed=1), nn.ReLU(),
                          nn.Unflatten(1, (1, 10)), nn.Conv1d(1, 4, 3))  # 4 x 3, full rank
    small, report = factorise(model, (10,))
    assert type(small[0]) is nn.Linear and type(small[5]) is nn.Conv1d
    assert isinstance(small[2], Factorised)
    outcomes = {e.name: (e.outcome, e.rank) for e in report.layers}
    assert outcomes == {"0": (KEPT_RANK, 5), "2": (FACTORISED, 4), "5": (KEPT_RANK, 3)}


def test_a_depthwise_conv_never_pays():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 4, 5, 5))
    small, report = factorise(model, (4, 5, 5))
    assert type(small[0]) is nn.Conv2d and report.layers[0].outcome == KEPT_RANK


def test_a_dead_neuron_stays_exactly_dead_in_the_pair():
    layer = _plant(nn.Linear(60, 40), [5])
    with torch.no_grad():
        layer.weight[:7] = 0
    small, _ = factorise(nn.Sequential(layer, nn.ReLU(), nn.Linear(40, 3)), (60,))
    assert bool((small[0].second.weight[:7] == 0).all())
    assert bool((small[0].second.weight[7:] != 0).any(dim=1).all())


def test_a_non_finite_weight_is_kept_without_an_svd():
    layer = _plant(nn.Linear(60, 40), [5])
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    small, report = factorise(nn.Sequential(layer, nn.Linear(40, 3)), (60,))
    assert type(small[0]) is nn.Linear and report.layers[0].outcome == KEPT_NONFINITE


def test_a_factorisation_that_moves_the_outputs_is_undone_alone():
    # Most of the middle layer's singular values lie below rank_tol, but the next layer
    # amplifies what they carry: truncating them moves the outputs, so only the exact
    # factorisation of the first layer stays (found by bisection).
    first = _plant(nn.Linear(60, 40), [5])
    middle, last = nn.Linear(40, 40), nn.Linear(40, 3)
    with torch.no_grad():
        middle.weight.copy_(torch.diag(torch.cat([torch.ones(10), torch.full((30,), 1e-8)])))
        middle.bias.zero_()
        last.weight[:, 10:] *= 1e8
    model = nn.Sequential(first, nn.ReLU(), middle, nn.ReLU(), last)
    small, report = factorise(model, (60,))
    outcomes = {e.name: (e.outcome, e.rank) for e in report.layers}
    assert outcomes["0"] == (FACTORISED, 5) and outcomes["2"] == (KEPT_OUTPUT, 10)
    assert type(small[2]) is nn.Linear and torch.equal(small[2].weight, middle.weight)
    assert report.layers[1].params_after == report.layers[1].params_before
    x = torch.randn(8, 60)
    with torch.no_grad():
        scale = max(1.0, model(x).abs().max().item())
    assert _max_diff(model, small, x) < 1e-5 * scale


def test_the_combined_penalty_is_low_rank_then_group_and_keeps_zero_rows_exact():
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(12, 30, generator=g)
    matrix[:3] *= 0.01  # rows the group step kills
    penalty = make_penalty("group+low-rank", 0.5, lam_rank=2.0)
    assert penalty == GroupLowRank(0.5, 2.0)
    out = penalty(matrix, 0.3)
    want = GroupLasso(0.5)(LowRank(2.0)(matrix, 0.3), 0.3)
    assert torch.equal(out, want)
    assert bool((out[:3] == 0).all())
    assert torch.linalg.matrix_rank(out) < torch.linalg.matrix_rank(matrix)
    assert penalty.scaled(0.5) == GroupLowRank(0.25, 1.0)
    with pytest.raises(CompactCNNError, match="lam_rank"):
        GroupLowRank(0.1, -1.0)


def test_training_with_group_and_low_rank_compacts_then_factorises_exactly():
    torch.manual_seed(0)
    model = models.create("lenet5", input_size=16)
    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    sgd = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = ProximalOptimizer(sgd, neuron_groups(model, x[:1]), GroupLowRank(0.005, 4.0))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()

    small, compacted = compact(model, x[:8])
    smaller, report = factorise(small, x[:8])

    assert compacted.after.total_params < compacted.before.total_params  # dead neurons out
    assert report.factorised  # then the survivors' rank
    assert report.after.total_params < report.before.total_params
    with torch.no_grad():
        scale = max(1.0, model(x).abs().max().item())
    assert _max_diff(model, smaller, x) < 1e-5 * scale


@pytest.fixture
def factorised_lenet() -> nn.Module:
    model = models.create("lenet5", input_size=16).eval()
    _plant(model.fc3, [6])
    _plant(model.conv2, [4], seed=1)
    small, report = factorise(model, (1, 16, 16))
    assert {e.name for e in report.factorised} == {"conv2", "fc3"}
    return small


def test_a_factorised_model_file_round_trips_without_pickle(factorised_lenet, tmp_path):
    path = tmp_path / "model.safetensors"
    io.save(factorised_lenet, path)
    meta, _ = io.read(path)
    assert meta["structure"] == {"conv2": "factorised", "fc3": "factorised"}
    assert meta["widths"]["fc3.first"] == {"in": 50, "out": 6}
    back = io.load(path)
    assert isinstance(back.fc3, Factorised) and back.fc3.rank == 6
    x = torch.randn(4, 1, 16, 16)
    assert _max_diff(factorised_lenet, back, x) == 0.0


def test_the_table_command_reads_a_factorised_model_file(factorised_lenet, tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    io.save(factorised_lenet, path)
    assert main(["table", str(path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["layers"]}
    assert rows["fc3.first"]["output"] == 6 and rows["conv2.first"]["output"] == 4


def test_an_unknown_structure_is_refused(factorised_lenet, tmp_path):
    tensors = {k: v.clone() for k, v in factorised_lenet.state_dict().items()}
    meta = {"format": io.FORMAT, "spec": json.dumps(io.spec_of(factorised_lenet)),
            "widths": json.dumps(io._widths(factorised_lenet)), "extra": "{}",
            "structure": json.dumps({"fc3": "twisted", "conv2": "factorised"})}
    path = tmp_path / "bad.safetensors"
    path.write_bytes(st_save(tensors, metadata=meta))
    with pytest.raises(CompactCNNError, match="unknown structure 'twisted'"):
        io.load(path)


def test_a_factorised_model_exports_to_onnx(factorised_lenet, tmp_path):
    pytest.importorskip("onnxruntime")
    from compactcnn.deploy.onnx import to_onnx

    assert to_onnx(factorised_lenet, (1, 16, 16), tmp_path / "model.onnx") < 1e-5
