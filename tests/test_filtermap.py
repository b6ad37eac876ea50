"""3D-FilterMap layers and the zoo models built from them: layout, exactness, budgets, training."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from compactcnn.accounting import neuron_table
from compactcnn.data import synthetic
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile
from compactcnn.layers.filtermap import FilterMap, FilterMapConv2d, FilterMapLinear, materialized
from compactcnn.models import create
from tests.fixtures_models import train_steps


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reference_filters(in_ch: int, out_ch: int, k: int, shape: tuple[int, int, int],
                      weights: torch.Tensor) -> torch.Tensor | None:
    """The documented layout, one filter and one weight at a time; None for a refused map."""
    c_m, h_m, w_m = shape
    if c_m < in_ch or h_m < k or w_m < k:
        return None
    pos_w = w_m - k + 1
    positions = (h_m - k + 1) * pos_w
    bands = math.ceil(out_ch / positions)
    if bands > c_m:
        return None
    filters = torch.empty(out_ch, in_ch, k, k, dtype=weights.dtype)
    read = torch.zeros(shape, dtype=torch.bool)
    for f in range(out_ch):
        band, pos = divmod(f, positions)
        top, left = divmod(pos, pos_w)
        for i in range(in_ch):
            c = (band * c_m // bands + i) % c_m
            filters[f, i] = weights[c, top:top + k, left:left + k]
            read[c, top:top + k, left:left + k] = True
    return filters if read.all() else None


# --- the layer ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(in_ch=st.integers(1, 4), out_ch=st.integers(1, 12), k=st.integers(1, 3),
       extra=st.tuples(st.integers(-1, 6), st.integers(-1, 2), st.integers(-1, 2)),
       stride=st.integers(1, 2), padding=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_forward_is_a_conv_with_the_documented_filters(in_ch, out_ch, k, extra, stride,
                                                       padding, seed):
    shape = (in_ch + extra[0], k + extra[1], k + extra[2])
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    expected = reference_filters(in_ch, out_ch, k, shape, weights) if min(shape) > 0 else None
    if expected is None:
        with pytest.raises(CompactCNNError):
            FilterMapConv2d(in_ch, out_ch, k, shape, stride, padding)
        return
    layer = FilterMapConv2d(in_ch, out_ch, k, shape, stride, padding)
    with torch.no_grad():
        layer.map.copy_(weights / layer.scale)  # the parameter is in units of 1/sqrt(reads)
    assert torch.allclose(layer.values(), weights, rtol=1e-6, atol=0)
    assert torch.allclose(layer.filters(), expected, rtol=1e-6, atol=0)
    assert torch.equal(layer.filters(), layer.values().flatten()[layer.index])
    conv = nn.Conv2d(in_ch, out_ch, k, stride, padding)
    with torch.no_grad():
        conv.weight.copy_(layer.filters())
        conv.bias.copy_(layer.bias)
    x = torch.randn(2, in_ch, 7, 6)
    assert torch.equal(layer(x), conv(x))
    assert count(layer) == math.prod(shape) + out_ch


def test_gradients_pass_gradcheck_in_double():
    torch.manual_seed(0)
    conv = FilterMapConv2d(3, 8, 3, (4, 4, 4), stride=2, padding=1).double()
    linear = FilterMapLinear(2, 8, 2, (3, 3, 3)).double()
    for layer, x in ((conv, torch.randn(2, 3, 6, 5)), (linear, torch.randn(3, 2 * 2 * 2))):
        def run(x, m, b, layer=layer):
            return functional_call(layer, {"map": m, "bias": b}, (x,))
        inputs = (x.double(), layer.map.detach().clone(), layer.bias.detach().clone())
        assert torch.autograd.gradcheck(run, tuple(t.requires_grad_() for t in inputs))


def test_sgd_moves_a_shared_entry_by_the_mean_of_its_readers_gradients():
    """As far as a dense layer's weight moves, however many filters read the entry."""
    torch.manual_seed(0)
    layer = FilterMapConv2d(2, 8, 3, (3, 4, 4))
    reads = torch.bincount(layer.index.flatten(), minlength=layer.map.numel())
    assert reads.min() < reads.max()  # corners are read less than the middle
    assert torch.equal(layer.scale.flatten(), reads.float().rsqrt())
    before = layer.values().detach().clone()
    upstream = torch.randn(layer.filters().shape)
    (layer.filters() * upstream).sum().backward()
    summed = torch.zeros(layer.map.numel()).index_add_(0, layer.index.flatten(),
                                                       upstream.flatten())
    torch.optim.SGD([layer.map], lr=0.1).step()
    step = (layer.values().detach() - before).flatten()
    assert torch.allclose(step, -0.1 * summed / reads, atol=1e-6)


def test_neighbouring_filters_share_map_entries():
    layer = FilterMapConv2d(2, 8, 3, (3, 4, 4))  # 4 spatial positions, 2 channel bands
    reads = torch.zeros(layer.map.numel(), dtype=torch.long)
    reads.index_add_(0, layer.index.flatten(), torch.ones(layer.index.numel(), dtype=torch.long))
    assert reads.min() >= 1 and reads.max() > 1
    assert count(layer) == 3 * 4 * 4 + 8 < 8 * 2 * 3 * 3 + 8


def test_materialize_is_exact_and_independent():
    torch.manual_seed(0)
    conv = FilterMapConv2d(3, 8, 3, (5, 4, 4), stride=2, padding=1)
    plain = conv.materialize()
    x = torch.randn(4, 3, 9, 9)
    assert type(plain) is nn.Conv2d and torch.equal(plain(x), conv(x))
    linear = FilterMapLinear(4, 10, 2, (6, 3, 3), bias=False).eval()
    plain_linear = linear.materialize()
    x = torch.randn(4, 16)
    assert type(plain_linear) is nn.Linear and plain_linear.bias is None
    assert not plain_linear.training and torch.equal(plain_linear(x), linear(x))
    with torch.no_grad():
        plain.weight.zero_()  # the copy no longer shares anything with the map
    assert conv.map.abs().sum() > 0


@pytest.mark.parametrize(("in_ch", "out_ch", "k", "shape", "words"), [
    (4, 8, 3, (3, 5, 5), "at least 4 map channels"),
    (2, 8, 3, (4, 2, 5), "smaller than the 3x3 kernel"),
    (2, 20, 3, (4, 4, 4), "at most 16 distinct filters"),
    (2, 4, 3, (9, 3, 3), "read by no filter"),
])
def test_a_map_that_cannot_hold_the_filters_is_refused(in_ch, out_ch, k, shape, words):
    with pytest.raises(CompactCNNError, match=words):
        FilterMapConv2d(in_ch, out_ch, k, shape)


@pytest.mark.parametrize(("in_ch", "out_ch", "k"), [(20, 50, 5), (128, 256, 3), (1, 7, 3)])
@pytest.mark.parametrize("share", [0.0, 0.03, 0.1, 0.5])
def test_map_shape_for_meets_a_budget_with_a_valid_map(in_ch, out_ch, k, share):
    params = round(share * in_ch * out_ch * k * k)
    shape = FilterMap.map_shape_for(in_ch, out_ch, k, params)
    FilterMapConv2d(in_ch, out_ch, k, shape)  # valid
    smallest = FilterMap.map_shape_for(in_ch, out_ch, k, 0)
    assert smallest == FilterMapConv2d(in_ch, out_ch, k).map_shape
    if math.prod(smallest) < params:
        assert abs(math.prod(shape) - params) <= shape[1] * shape[2] / 2
    else:
        assert shape == smallest


# --- the zoo models ----------------------------------------------------------------------------

DENSE = {"lenet5_filtermap": "lenet5", "vgg_small_filtermap": "vgg_small"}
TOTALS = {("lenet5_filtermap", 0.10): 43_103, ("lenet5_filtermap", 0.05): 21_540,
          ("vgg_small_filtermap", 0.10): 58_503, ("vgg_small_filtermap", 0.05): 29_253}


@pytest.mark.parametrize(("name", "fraction"), sorted(TOTALS))
def test_zoo_models_hold_their_share_and_materialise_into_the_dense_model(name, fraction):
    torch.manual_seed(0)
    model = create(name, fraction=fraction).eval()
    dense = create(DENSE[name]).eval()
    assert count(model) == TOTALS[name, fraction]
    assert count(model) == pytest.approx(fraction * count(dense), rel=0.001)
    assert [n for n, _ in model.named_modules()] == [n for n, _ in dense.named_modules()]
    first_conv = "conv1" if DENSE[name] == "lenet5" else "features.0"
    assert type(model.get_submodule(first_conv)) is nn.Conv2d
    plain = materialized(model)
    dense.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(dense(x), model(x))
    assert any(isinstance(m, FilterMap) for m in model.modules())  # left as it was
    assert model.compactcnn_spec["name"] == name
    assert plain.compactcnn_spec == dense.compactcnn_spec  # the copy is the plain zoo model


@pytest.mark.parametrize("name", sorted(DENSE))
def test_other_sizes_at_a_budget(name):
    model = create(name, num_classes=4, in_channels=3, input_size=32, fraction=0.2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    reference = create(DENSE[name], num_classes=4, in_channels=3, input_size=32)
    assert count(model) == pytest.approx(0.2 * count(reference), rel=0.001)
    for fraction in (0.0, 1.0, 0.001):
        with pytest.raises(CompactCNNError, match="fraction"):
            create(name, fraction=fraction)
    with pytest.raises(CompactCNNError, match="input_size"):
        create(name, input_size=4, fraction=0.1)


def test_the_neuron_table_counts_the_map_in_the_shape_of_the_dense_layer():
    model, dense = create("lenet5_filtermap"), create("lenet5")
    table, plain = neuron_table(model, (1, 28, 28)), neuron_table(dense, (1, 28, 28))
    assert table.total_params == count(model) == 43_103
    conv2, fc3 = table.row("conv2"), table.row("fc3")
    assert (conv2.kind, fc3.kind) == ("fm-conv", "fm-linear")
    assert conv2.params == model.conv2.map.numel() + 50
    assert fc3.params == model.fc3.map.numel() + 500
    for row in (conv2, fc3):  # every column but the parameters is the dense layer's
        dense_row = plain.row(row.name)
        assert (row.width, row.height, row.input, row.output, row.feature_map) == (
            dense_row.width, dense_row.height, dense_row.input, dense_row.output,
            dense_row.feature_map)
        assert row.params < dense_row.params
    assert table.total_feature_map == plain.total_feature_map


def test_a_model_file_keeps_the_maps_and_refuses_a_map_of_another_shape(tmp_path):
    torch.manual_seed(0)
    model = create("vgg_small_filtermap", input_size=16, fraction=0.05).eval()
    path = tmp_path / "fm.safetensors"
    modelfile.save(model, path)
    loaded = modelfile.load(path)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert count(loaded) == count(model) and isinstance(loaded.features[3], FilterMapConv2d)
    bigger = model.features[3].map_shape[0] + 1
    with torch.no_grad():  # a map that still covers every index: it would run, wrongly
        model.features[3].map = nn.Parameter(torch.randn(bigger, *model.features[3].map_shape[1:]))
    modelfile.save(model, path)
    with pytest.raises(CompactCNNError, match=r"features\.3\.map has shape"):
        modelfile.load(path)


@pytest.mark.parametrize(("name", "size"), [("lenet5_filtermap", 28), ("vgg_small_filtermap", 16)])
def test_zoo_model_trains_on_a_small_slice(name, size):
    torch.manual_seed(0)
    x, y = synthetic(400, (1, size, size), num_classes=10, seed=3)
    (train_x, test_x), (train_y, test_y) = x.split(200), y.split(200)
    model = create(name, input_size=size)
    losses = train_steps(model, train_x, train_y, 40, 2e-3)
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert accuracy > 0.8  # chance is 0.1
