"""Compaction of every zoo model, and of the zoo's hard cases (AlexNet's LRN and grouped halves,
a layer that died entirely), through the API and the command line."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch import nn

from compactcnn import models
from compactcnn.accounting import cascade, neuron_table
from compactcnn.cli import main
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile as io
from compactcnn.layers.filtermap import FilterMap
from compactcnn.sparsity import neuron_groups
from compactcnn.surgery import compact
from compactcnn.surgery.outcome import KEPT_ACROSS, KEPT_GROUPED, KEPT_LAST
from tests.compaction_helpers import (
    assert_report_consistent,
    assert_unchanged,
    count,
    kill,
    max_diff,
    randomize_norms,
    snapshot,
    widths,
)

# Small sides: each model's smallest input, except AlexNet's grouped layers want room.
SIDES = {"alexnet": 67, "lenet5": 16, "mlp": 8, "resnet18": 32, "resnet20": 8, "resnet56": 8,
         "squeezenet1_0": 21, "vgg11": 32, "vgg_small": 8, "gray_hist": 8, "gray_hist_cnn": 8,
         "gray_hist_colour": 8}


# --- every zoo model ---------------------------------------------------------------------------


# Filter-map models have no neuron groups (their filters share weights): compaction
# materialises them (test_filter_map_models_compact_into_the_plain_model).
FILTER_MAPS = {"lenet5_filtermap": "lenet5", "vgg_small_filtermap": "vgg_small"}
ZOO = [n for n in models.names() if n != "vgg16" and n not in FILTER_MAPS]  # vgg11 for both


def test_the_zoo_list_is_covered():
    assert set(ZOO) | {"vgg16"} | set(FILTER_MAPS) == set(models.names())
    assert set(ZOO) == set(SIDES)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_compacts_exactly(name, tmp_path):
    side = SIDES[name]
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, input_size=side)
    shape = (models.defaults(name)["in_channels"], side, side)
    randomize_norms(model)
    example = torch.randn(2, *shape)
    killed = kill(model, example, 0.5)
    model.train()  # compact must work on a copy in eval mode and leave this flag alone
    before = snapshot(model)

    small, report = compact(model, example)

    assert_unchanged(model, before)
    assert small.training
    model.eval(), small.eval()
    assert report.max_abs_output_diff <= 1e-5
    assert max_diff(model, small, shape) <= 1e-5
    assert_report_consistent(model, small, report, killed)

    # The surgery agrees with the table's arithmetic, one --remove per group.
    removed = {g.name: g.removed for g in report.groups if g.removed}
    predicted = cascade(model, neuron_table(model, shape), removed)
    assert predicted.total_params == count(small) == report.after.total_params

    if name == "alexnet":
        # LRN normalises across neurons: conv1 and conv2 keep theirs; the grouped layers keep
        # equal halves; the rest goes.
        kept = {g.name: g.kept for g in report.groups}
        assert kept["conv1"] == Counter({KEPT_ACROSS: killed["conv1"]})
        assert kept["conv2"] == Counter({KEPT_ACROSS: killed["conv2"]})
        assert set(report.kept) == {KEPT_ACROSS, KEPT_GROUPED}
        for conv in ("conv2", "conv4", "conv5"):
            m = getattr(small, conv)
            assert m.in_channels % 2 == 0 and m.out_channels % 2 == 0
    else:
        assert not report.kept, report.kept
        assert sum(g.removed for g in report.groups) == sum(killed.values())

    path = tmp_path / f"{name}.safetensors"
    io.save(small, path)
    loaded = io.load(path)
    x = torch.randn(3, *shape)
    saved, kept = small.state_dict(), loaded.state_dict()
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)
    with torch.no_grad():  # equal tensors; a sliced (strided) weight may round differently
        assert torch.allclose(loaded(x), small(x), rtol=1e-6, atol=1e-6)
    assert widths(loaded) == widths(small)


@pytest.mark.parametrize("name", sorted(FILTER_MAPS))
def test_filter_map_models_compact_into_the_plain_model(name, tmp_path):
    plain, side = FILTER_MAPS[name], models.min_input_size(name)
    torch.manual_seed(0)
    model = models.create(name, input_size=side)
    randomize_norms(model)
    shape = (1, side, side)
    example = torch.randn(2, *shape)
    with pytest.raises(CompactCNNError, match=r"^'[\w.]+' is a filter-map layer: its filters "
                                              r"share weights, .*materialise it first"):
        neuron_groups(model, example)
    model.train()
    before = snapshot(model)

    small, report = compact(model, example)

    assert_unchanged(model, before)
    assert not any(isinstance(m, FilterMap) for m in small.modules())
    assert isinstance(small.get_submodule("conv2" if plain == "lenet5" else "features.3"),
                      nn.Conv2d)
    model.eval(), small.eval()
    assert report.max_abs_output_diff == 0.0 and max_diff(model, small, shape) == 0.0
    # The report counts the maps as given, and the plain network they became.
    dense = models.create(plain, input_size=side)
    assert report.before.total_params == count(model) < count(small) == count(dense)
    assert report.after.total_params == count(small)
    assert not any(g.dead for g in report.groups)  # its groups: the plain network's
    assert small.compactcnn_spec == {"name": plain, "num_classes": 10, "in_channels": 1,
                                     "input_size": side}
    path = tmp_path / "plain.safetensors"
    io.save(small, path)
    loaded = io.load(path)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))

    # From there on it is a plain network: its dead neurons go like any.
    killed = kill(small, example, 0.5)
    smaller, report = compact(small, example)
    assert report.max_abs_output_diff <= 1e-5
    assert_report_consistent(small, smaller, report, killed)


def test_alexnet_lrn_neighbours_are_kept_even_at_pixel_scale():
    """Removing a zero neuron before LRN shifts its neighbours' windows: a tiny change with
    unit inputs, a large one with pixel values. It must be refused in both cases."""
    model = models.create("alexnet", num_classes=10, input_size=67).eval()
    example = torch.randn(2, 3, 67, 67) * 50
    killed = kill(model, example, {"conv1": 0.3})
    small, report = compact(model, example)
    assert report.groups[0].name == "conv1"
    assert report.groups[0].kept == Counter({KEPT_ACROSS: killed["conv1"]})
    assert small.conv1.out_channels == 96
    for scale in (1.0, 50.0):
        assert max_diff(model, small, (3, 67, 67), scale=scale) == 0.0


# --- grouped convolutions ----------------------------------------------------------------------


def test_alexnet_uneven_halves_keep_equal_groups():
    torch.manual_seed(9)
    model = models.create("alexnet", num_classes=10, input_size=67).eval()
    with torch.no_grad():
        for layer, dead in {"conv3": [0, 1, 2, 3, 4, 200, 201],         # 5 | 2 of conv4's halves
                            "conv4": [*range(10), 192],                 # 10 | 1
                            "conv5": [*range(130, 136)]}.items():       # 0 | 6
            m = getattr(model, layer)
            m.weight[dead] = 0.0
            m.bias[dead] = 0.0
    small, report = compact(model, torch.randn(2, 3, 67, 67))
    g = {o.name: o for o in report.groups}
    assert (g["conv3"].removed, g["conv3"].kept) == (4, Counter({KEPT_GROUPED: 3}))
    assert (g["conv4"].removed, g["conv4"].kept) == (2, Counter({KEPT_GROUPED: 9}))
    assert (g["conv5"].removed, g["conv5"].kept) == (0, Counter({KEPT_GROUPED: 6}))
    assert "a grouped convolution keeps equal groups" in report.format()
    assert (small.conv3.out_channels, small.conv4.in_channels) == (380, 380)
    assert (small.conv4.out_channels, small.conv5.in_channels) == (382, 382)
    assert small.conv5.out_channels == 256
    assert max_diff(model, small, (3, 67, 67)) <= 1e-5
    # Each half keeps exactly its own inputs: the first dead ones of each half go (conv3 0, 1
    # and 200, 201; conv4 0 and 192), read in each half's own input numbering.
    w = model.conv4.weight.detach()
    first = w[1:192, 2:192]
    second = w[193:384][:, [i for i in range(192) if i not in (200 - 192, 201 - 192)]]
    assert torch.equal(small.conv4.weight.detach(), torch.cat([first, second]))


# --- a layer that died entirely ----------------------------------------------------------------


def test_a_dead_layer_keeps_one_neuron_and_strict_refuses():
    torch.manual_seed(11)
    model = models.create("lenet5", num_classes=10, input_size=16).eval()
    kill(model, torch.randn(1, 1, 16, 16), {"fc3": 1.0})
    small, report = compact(model, torch.randn(2, 1, 16, 16))
    fc3 = next(g for g in report.groups if g.name == "fc3")
    assert (fc3.dead, fc3.removed, fc3.kept) == (500, 499, Counter({KEPT_LAST: 1}))
    assert "kept 1 dead neuron(s): last neuron of the layer" in report.format()
    assert small.fc3.out_features == 1 and small.fc4.in_features == 1
    assert max_diff(model, small, (1, 16, 16)) <= 1e-6
    with pytest.raises(CompactCNNError, match="every neuron of 'fc3' is dead.*strict"):
        compact(model, torch.randn(2, 1, 16, 16), strict=True)


def test_a_dead_layer_before_a_grouped_conv_keeps_one_neuron_per_group():
    torch.manual_seed(12)
    model = models.create("alexnet", num_classes=10, input_size=67).eval()
    with torch.no_grad():
        model.conv3.weight.zero_()
        model.conv3.bias.zero_()
    small, report = compact(model, torch.randn(2, 3, 67, 67))
    conv3 = next(g for g in report.groups if g.name == "conv3")
    assert conv3.removed == 382
    assert conv3.kept == Counter({KEPT_LAST: 1, KEPT_GROUPED: 1})
    assert small.conv4.in_channels == 2 and small.conv4.weight.shape[1] == 1
    assert max_diff(model, small, (3, 67, 67)) <= 1e-5


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def sparse_file(tmp_path):
    model = models.create("lenet5", num_classes=10, input_size=16)
    kill(model, torch.randn(1, 1, 16, 16), 0.5)
    path = tmp_path / "sparse.safetensors"
    io.save(model, path)
    return path, model.eval()


def test_cli_compact_json(sparse_file, tmp_path, capsys):
    path, model = sparse_file
    out = tmp_path / "compact.safetensors"
    assert main(["compact", str(path), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out)
    assert report["dense"]["params"] == count(model)
    small = io.load(out)
    assert report["compact"]["params"] == count(small) < count(model)
    assert report["max_abs_output_diff"] <= 1e-5
    assert max_diff(model, small, (1, 16, 16)) <= 1e-5


def test_cli_compact_table_and_refusals(sparse_file, tmp_path, capsys):
    path, _ = sparse_file
    out = tmp_path / "compact.safetensors"
    assert main(["compact", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("memory footprint") == 2 and "before" in text and "after" in text
    assert f"wrote {out}" in text

    stamp = out.read_bytes()
    assert main(["compact", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert out.read_bytes() == stamp

    first = io.read(out)
    assert main(["compact", str(path), "--out", str(out), "--force", "--json"]) == 0
    capsys.readouterr()
    again = io.read(out)  # the same model, compacted the same way (metadata order may differ)
    assert again[0] == first[0] and again[1].keys() == first[1].keys()
    assert all(torch.equal(again[1][k], v) for k, v in first[1].items())

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a model\n")
    assert main(["compact", str(text_file), "--out", str(tmp_path / "x.safetensors")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "not a compactcnn model file" in captured.err
    assert not (tmp_path / "x.safetensors").exists()
