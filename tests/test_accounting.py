"""The per-layer neuron table against published counts, hand arithmetic and physical pruning.

Big models are built on the ``meta`` device: counting needs shapes, not weights. Every
cascade (the table's arithmetic prediction of a removal) is checked against torch-pruning
removing the same neurons for real, then tracing the pruned model afresh.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from compactcnn import models
from compactcnn.accounting import (
    DTYPE_BYTES,
    NeuronTable,
    cascade,
    format_table,
    neuron_table,
    parse_removals,
)
from compactcnn.errors import CompactCNNError
from compactcnn.layers import neuron_layer_types

# The supplementary's Table 1: name, width, height, input, output, parameters.
ALEXNET_TABLE = [
    ("conv1", 11, 11, 3, 96, 34_944),
    ("conv2", 5, 5, 48, 256, 307_456),
    ("conv3", 3, 3, 256, 384, 885_120),
    ("conv4", 3, 3, 192, 384, 663_936),
    ("conv5", 3, 3, 192, 256, 442_624),
    ("fc6", 6, 6, 256, 4096, 37_752_832),
    ("fc7", 1, 1, 4096, 4096, 16_781_312),
    ("fc8", 1, 1, 4096, 1000, 4_097_000),
]


def on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return models.create(name, **kwargs)


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shape_of(name: str) -> tuple[int, int, int]:
    d = models.defaults(name)
    return d["in_channels"], d["input_size"], d["input_size"]


def output_numels(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """Our own hooks: the numel of every convolution's and linear layer's output at batch 1."""
    seen: dict[str, int] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out.numel()))
               for n, m in model.named_modules() if isinstance(m, neuron_layer_types())]
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return seen


def prune_physically(model: nn.Module, shape: tuple[int, ...], layer: str,
                     idxs: list[int]) -> nn.Module:
    """torch-pruning removes output neurons ``idxs`` of ``layer`` and everything coupled."""
    model.eval()
    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    module = dict(model.named_modules())[layer]
    fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) \
        else tp.prune_conv_out_channels
    graph.get_pruning_group(module, fn, idxs).prune()
    return model


def evenly(size: int, blocks: int, n: int) -> list[int]:
    """The last ``n / blocks`` neurons of each of ``blocks`` equal blocks."""
    per, step = n // blocks, size // blocks
    assert per * blocks == n
    return sorted(b * step + step - 1 - i for b in range(blocks) for i in range(per))


def assert_matches_physical(predicted: NeuronTable, pruned: nn.Module) -> None:
    """The prediction equals the pruned model: its parameter count and its fresh trace."""
    assert predicted.total_params == numel(pruned)
    modules = dict(pruned.named_modules())
    for r in predicted.layers:
        m = modules[r.name]
        if r.kind == "conv":
            assert tuple(m.weight.shape) == (r.output, r.input, r.height, r.width), r.name
            assert m.groups == r.groups, r.name
        elif r.kind == "linear":
            assert tuple(m.weight.shape) == (r.output, r.input * r.height * r.width), r.name
    assert neuron_table(pruned, predicted.input, predicted.model).layers == predicted.layers


def changed_rows(before: NeuronTable, after: NeuronTable) -> set[str]:
    return {a.name for a, b in zip(before.layers, after.layers, strict=True) if a != b}


# --- 1. totals ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, total", [
    ("alexnet", 60_965_224),
    ("vgg16", 138_357_544),
    ("resnet18", 11_689_512),
    ("squeezenet1_0", 1_248_424),
])
def test_published_totals_with_1000_classes(name, total):
    model = on_meta(name, num_classes=1000)
    table = neuron_table(model, shape_of(name), name)
    assert table.total_params == total
    assert numel(model) == total
    # The rows' arithmetic, not a sum of numel: each conv/linear row is weights + bias + its
    # norm layer, computed from the row's own width x height x input x output.
    modules = dict(model.named_modules())
    for r in table.layers:
        if r.kind == "other":
            continue
        m = modules[r.name]
        assert r.params == m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) \
            + r.norm_per_neuron * r.output
        assert r.output * r.width * r.height * r.input == m.weight.numel()
    if name == "resnet18":  # every convolution owns its BatchNorm's two parameters per neuron
        assert all(r.norm_per_neuron == 2 for r in table.layers if r.kind == "conv")
        assert not [r for r in table.layers if r.kind == "other"]


@pytest.fixture(scope="module")
def alexnet_meta() -> tuple[nn.Module, NeuronTable]:
    model = on_meta("alexnet")
    return model, neuron_table(model, (3, 227, 227), "alexnet")


def test_alexnet_rows_are_the_papers_table_1(alexnet_meta):
    model, table = alexnet_meta
    rows = [(r.name, r.width, r.height, r.input, r.output, r.params) for r in table.layers]
    assert rows == ALEXNET_TABLE
    assert [r.kind for r in table.layers] == ["conv"] * 5 + ["linear"] * 3
    assert [r.groups for r in table.layers] == [1, 2, 1, 2, 2, 1, 1, 1]
    assert table.total_params == 60_965_224
    # The paper's two other totals, from the rows: without biases, and without the grouping.
    assert table.total_params - sum(r.output for r in table.layers if r.bias) == 60_954_656
    assert sum(r.output * (r.width * r.height * r.input * r.groups + 1)
               for r in table.layers) == 62_378_344
    # Feature maps: 96x55x55, 256x27x27, 384x13x13 (twice), 256x13x13, then the fc outputs.
    assert [r.feature_map for r in table.layers] == [
        96 * 55 * 55, 256 * 27 * 27, 384 * 169, 384 * 169, 256 * 169, 4096, 4096, 1000]
    assert output_numels(model, (3, 227, 227)) == {r.name: r.feature_map for r in table.layers}
    assert table.total_feature_map == 659_272


def test_format_table_prints_the_paper_numbers(alexnet_meta):
    text = format_table(alexnet_meta[1])
    fc6 = next(line for line in text.splitlines() if line.startswith("fc6"))
    assert fc6.split() == ["fc6", "linear", "6", "6", "256", "4096", "1", "37,752,832", "4,096"]
    assert "60,965,224" in text.splitlines()[-2]


# --- 2. cascades, by hand and physically -----------------------------------------------------


def test_alexnet_conv5_cascade_by_hand_and_physically(alexnet_meta):
    model, table = alexnet_meta
    after = cascade(model, table, {"conv5": 10})
    assert table.total_params - after.total_params == 10 * (3 * 3 * 192 + 1) + 10 * 36 * 4096
    assert changed_rows(table, after) == {"conv5", "fc6"}
    conv5, fc6 = after.row("conv5"), after.row("fc6")
    assert (conv5.output, conv5.input, conv5.groups) == (246, 192, 2)
    assert conv5.params == 442_624 - 10 * (3 * 3 * 192 + 1)
    assert (fc6.width, fc6.height, fc6.input, fc6.output) == (6, 6, 246, 4096)
    assert fc6.params == 37_752_832 - 10 * 36 * 4096
    # conv5 has two groups: the neurons come five from each.
    pruned = prune_physically(on_meta("alexnet"), (3, 227, 227), "conv5", evenly(256, 2, 10))
    assert_matches_physical(after, pruned)


def test_alexnet_conv1_feeds_grouped_conv2(alexnet_meta):
    model, table = alexnet_meta
    after = cascade(model, table, {"conv1": 10})
    assert changed_rows(table, after) == {"conv1", "conv2"}
    conv1, conv2 = after.row("conv1"), after.row("conv2")
    assert (conv1.output, conv1.params) == (86, 86 * (11 * 11 * 3 + 1))
    assert (conv2.input, conv2.output, conv2.groups) == (43, 256, 2)  # 48 - 10 / 2
    assert conv2.params == 256 * (5 * 5 * 43 + 1)
    pruned = prune_physically(on_meta("alexnet"), (3, 227, 227), "conv1", evenly(96, 2, 10))
    assert_matches_physical(after, pruned)
    # An odd count cannot come evenly from conv2's two groups.
    with pytest.raises(CompactCNNError, match="multiple of 2"):
        cascade(model, table, {"conv1": 9})


def test_alexnet_cascade_refusals(alexnet_meta):
    model, table = alexnet_meta
    with pytest.raises(CompactCNNError, match="unknown layer 'conv9'.*conv1, conv2"):
        cascade(model, table, {"conv9": 1})
    with pytest.raises(CompactCNNError, match="between 1 and 4095"):
        cascade(model, table, {"fc6": 4096})
    with pytest.raises(CompactCNNError, match="between 1 and 4095"):
        cascade(model, table, {"fc6": 0})
    with pytest.raises(CompactCNNError, match="classifier"):
        cascade(model, table, {"fc8": 1})


RESNET20_COUPLED = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
RESNET20_CONSUMERS = ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1",
                      "layer2.0.downsample.0"]


@pytest.mark.parametrize("root", ["conv1", "layer1.1.conv2"])
def test_resnet20_residual_coupling(root):
    model = on_meta("resnet20")
    table = neuron_table(model, (3, 32, 32), "resnet20")
    after = cascade(model, table, {root: 4})
    assert changed_rows(table, after) == set(RESNET20_COUPLED + RESNET20_CONSUMERS)
    # Each coupled conv loses 4 neurons: 3x3 weights, no bias, BatchNorm's 2 per neuron.
    assert after.row("conv1").params == 12 * (3 * 3 * 3 + 2)
    for name in RESNET20_COUPLED[1:]:
        assert (after.row(name).output, after.row(name).params) == (12, 12 * (3 * 3 * 16 + 2))
    for name in RESNET20_CONSUMERS:
        r = after.row(name)
        assert r.input == 12
        assert r.params == r.output * (r.width * r.height * 12 + 2)
    assert table.total_params - after.total_params == (
        4 * (27 + 2) + 3 * 4 * (144 + 2) + 3 * 16 * 4 * 9 + 32 * 4 * 9 + 32 * 4)
    pruned = prune_physically(model, (3, 32, 32), root, list(range(12, 16)))
    assert_matches_physical(after, pruned)
    assert pruned(torch.zeros(2, 3, 32, 32, device="meta")).shape == (2, 10)  # it still runs


def test_resnet20_coupled_layers_cannot_both_be_named():
    model = on_meta("resnet20")
    table = neuron_table(model, (3, 32, 32))
    with pytest.raises(CompactCNNError, match="coupled"):
        cascade(model, table, {"conv1": 2, "layer1.2.conv2": 2})


@pytest.mark.parametrize("layer, n", [("features.3.expand1x1", 8), ("features.3.expand3x3", 6)])
def test_squeezenet_concatenation(layer, n):
    model = on_meta("squeezenet1_0")
    table = neuron_table(model, (3, 224, 224), "squeezenet1_0")
    after = cascade(model, table, {layer: n})
    assert changed_rows(table, after) == {layer, "features.4.squeeze"}
    before_row = table.row(layer)
    assert after.row(layer).output == 64 - n
    assert after.row(layer).params == before_row.params - n * (
        before_row.width * before_row.height * 16 + 1)
    squeeze = after.row("features.4.squeeze")
    assert (squeeze.input, squeeze.output) == (128 - n, 16)
    assert table.total_params - after.total_params == (
        n * (before_row.width * before_row.height * 16 + 1) + 16 * n)
    # expand3x3's channels come after expand1x1's in the concatenation: torch-pruning finds
    # their inputs of the next squeeze at an offset of 64.
    pruned = prune_physically(on_meta("squeezenet1_0"), (3, 224, 224), layer,
                              list(range(64 - n, 64)))
    assert_matches_physical(after, pruned)


# --- 3. any small CNN ------------------------------------------------------------------------


class Flat(nn.Module):
    """The ways a forward pass flattens a feature map for a linear layer."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def forward(self, x):
        if self.style == "view":
            return x.view(x.size(0), -1)
        if self.style == "reshape":
            return x.reshape(x.shape[0], -1)
        return torch.flatten(x, 1)


@st.composite
def small_cnns(draw):
    """A random conv/BN/ReLU/pool stack, a flatten, then one or two linear layers."""
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(5, 12)), draw(st.integers(5, 12))
    layers: list[nn.Module] = []
    ch, sh, sw = c, h, w
    for _ in range(draw(st.integers(1, 3))):
        kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        pad = draw(st.integers(0, 1))
        kh, kw = min(kh, sh + 2 * pad), min(kw, sw + 2 * pad)
        out = draw(st.integers(1, 8))
        # Not groups == out_channels != in_channels: torch-pruning cannot trace those.
        groups = draw(st.sampled_from([g for g in (1, 2) if ch % g == 0 and out % g == 0
                                       and (g == 1 or g < out or ch == out)]))
        layers.append(nn.Conv2d(ch, out, (kh, kw), padding=pad, groups=groups,
                                bias=draw(st.booleans())))
        sh, sw, ch = sh + 2 * pad - kh + 1, sw + 2 * pad - kw + 1, out
        bn = draw(st.sampled_from(["none", "before", "after"]))
        layers += {"none": [nn.ReLU()], "before": [nn.BatchNorm2d(out), nn.ReLU()],
                   "after": [nn.ReLU(), nn.BatchNorm2d(out)]}[bn]
        if min(sh, sw) >= 2 and draw(st.booleans()):
            layers.append(nn.MaxPool2d(2))
            sh, sw = sh // 2, sw // 2
    style = draw(st.sampled_from(["module", "view", "reshape", "function"]))
    layers.append(nn.Flatten() if style == "module" else Flat(style))
    if draw(st.booleans()):
        layers.append(nn.Dropout(0.5))
    features = ch * sh * sw
    n_linear = draw(st.integers(1, 2))
    for j in range(n_linear):
        # Sometimes exactly as wide as its input: a square layer right after the flatten.
        out = draw(st.one_of(st.integers(1, 10), st.just(min(features, 300))))
        layers.append(nn.Linear(features, out, bias=draw(st.booleans())))
        if j < n_linear - 1:
            if draw(st.booleans()):
                layers.append(nn.BatchNorm1d(out))
            layers.append(nn.ReLU())
        features = out
    return nn.Sequential(*layers), (c, h, w), (ch, sh, sw)


def removal(model: nn.Sequential, data) -> tuple[str, list[int]] | None:
    """A random non-classifier layer and neurons to remove, even across halves if grouped."""
    prunable = [(n, m) for n, m in model.named_children() if isinstance(m, neuron_layer_types())]
    choices = []
    for name, m in prunable[:-1]:
        size = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        grouped = any(getattr(k, "groups", 1) > 1 for _, k in prunable)
        if isinstance(m, nn.Linear) or size % 2 or not grouped:
            if size >= 2:
                choices.append((name, size, 1))
        elif size >= 4:
            choices.append((name, size, 2))
    if not choices:
        return None
    name, size, blocks = data.draw(st.sampled_from(choices))
    n = data.draw(st.integers(1, (size - 1) // blocks)) * blocks
    return name, evenly(size, blocks, n) if blocks > 1 else list(range(size - n, size))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_cnns(), st.data())
def test_random_small_cnns(spec, data):
    model, shape, (ch, sh, sw) = spec
    model.eval()
    table = neuron_table(model, shape)
    assert table.total_params == numel(model)
    outputs = output_numels(model, shape)
    traced = [r for r in table.layers if r.kind != "other"]
    assert [r.name for r in traced] == list(outputs)
    linear_seen = 0
    for r in traced:
        m = model.get_submodule(r.name)
        assert r.feature_map == outputs[r.name]
        if isinstance(m, nn.Conv2d):
            assert (r.kind, r.height, r.width) == ("conv", *m.kernel_size)
            assert (r.input, r.output, r.groups) == (m.in_channels // m.groups,
                                                     m.out_channels, m.groups)
        else:
            assert r.kind == "linear"
            flat = (sw, sh, ch) if linear_seen == 0 else (1, 1, m.in_features)
            assert (r.width, r.height, r.input) == flat
            linear_seen += 1
    # Every BatchNorm is somewhere: owned by the layer before it, or a row of its own.
    bns = [n for n, m in model.named_children() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    others = {r.name for r in table.layers if r.kind == "other"}
    owned = sum(r.norm_per_neuron * r.output for r in traced)
    assert owned + sum(numel(model.get_submodule(n)) for n in others) == sum(
        numel(model.get_submodule(n)) for n in bns)

    pick = removal(model, data)
    event(f"removal from {'nothing' if pick is None else type(model.get_submodule(pick[0]))}")
    if pick is None:
        return
    layer, idxs = pick
    event(f"grouped model: {any(getattr(m, 'groups', 1) > 1 for m in model)}")
    after = cascade(model, table, {layer: len(idxs)})
    assert after.total_params < table.total_params
    assert_matches_physical(after, prune_physically(copy.deepcopy(model), shape, layer, idxs))


class OddParams(nn.Module):
    """Parameters outside any conv/linear neuron: a BatchNorm after an add, a learnable scalar,
    and an auxiliary head that the forward pass never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.fc = nn.Linear(4 * 3 * 5, 3)
        self.aux = nn.Linear(7, 2)

    def forward(self, x):
        y = self.bn(self.a(x) + self.b(x)) * self.scale
        return self.fc(torch.flatten(y, 1))


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")  # torch-pruning, on scale
def test_parameters_outside_neurons_are_counted():
    model = OddParams()
    table = neuron_table(model, (2, 3, 5))
    assert table.total_params == numel(model) == (4 * 19) + 4 * 2 + 8 + 1 + 61 * 3 + 8 * 2
    assert table.row("bn").kind == "other" and table.row("bn").params == 8
    assert table.row("aux").kind == "other" and table.row("aux").params == 16
    assert sum(r.params for r in table.layers if r.name == "") == 1  # the scalar
    fc = table.row("fc")
    assert (fc.width, fc.height, fc.input) == (5, 3, 4)
    # The add couples a and b: removing one neuron of a takes it from b, bn and fc's input.
    after = cascade(model, table, {"a": 1})
    assert changed_rows(table, after) == {"a", "b", "bn", "fc"}
    assert after.row("bn").params == 6 and after.row("fc").input == 3
    with pytest.raises(CompactCNNError, match="'bn' has no neurons to remove"):
        cascade(model, table, {"bn": 1})
    assert table.total_params - after.total_params == 19 + 2 + 2 + 15 * 3
    assert_matches_physical(after, prune_physically(model, (2, 3, 5), "a", [3]))


def test_square_linear_after_flatten_is_not_mistaken_for_the_flatten():
    # 4 x 2 x 2 = 16 features, then Linear(16, 16): fc2 is not fed by the flatten.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    table = neuron_table(model, (1, 4, 4))
    assert [(r.width, r.height, r.input) for r in table.layers[1:]] == [(2, 2, 4), (1, 1, 16)]
    after = cascade(model, table, {"2": 2})
    assert after.row("4").input == 14
    assert_matches_physical(after, prune_physically(model, (1, 4, 4), "2", [14, 15]))


def test_linear_on_a_feature_map_and_a_3d_convolution():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c3 = nn.Conv3d(1, 4, (2, 3, 3))
            self.fc = nn.Linear(3, 5)  # acts on the last axis of a 4 x 2 x 3 x 3 map

        def forward(self, x):
            return self.fc(self.c3(x.unsqueeze(1)))

    model = Odd()
    table = neuron_table(model, (3, 5, 5))
    assert table.total_params == numel(model) == 4 * (2 * 3 * 3 + 1) + 20
    assert output_numels(model, (3, 5, 5)) == {r.name: r.feature_map for r in table.layers}


def test_a_model_without_layers_is_refused():
    with pytest.raises(CompactCNNError, match="no convolution or linear layer"):
        neuron_table(nn.Identity(), (3, 8, 8))
    with pytest.raises(CompactCNNError, match="does not accept input"):
        neuron_table(models.create("lenet5"), (3, 28, 28))


# --- 4. memory footprint ---------------------------------------------------------------------


def test_memory_footprint_scales_with_dtype_and_batch():
    table = neuron_table(models.create("lenet5"), (1, 28, 28))
    assert (table.total_params, table.total_feature_map) == (431_080, 15_230)
    base = table.memory()
    assert base == {"dtype": "float32", "batch": 1, "params_bytes": 431_080 * 4,
                    "feature_maps_bytes": 15_230 * 4, "total_bytes": (431_080 + 15_230) * 4}
    for dtype, size in {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}.items():
        assert DTYPE_BYTES[dtype] == size
        for batch in (1, 3, 64):
            mem = table.memory(dtype, batch)
            assert mem["params_bytes"] == 431_080 * size
            assert mem["feature_maps_bytes"] == 15_230 * batch * size
            assert mem["total_bytes"] == mem["params_bytes"] + mem["feature_maps_bytes"]
    assert table.as_dict("int8", 5)["memory"] == table.memory("int8", 5)
    with pytest.raises(CompactCNNError, match="unknown dtype 'float64'.*float32, float16"):
        table.memory("float64")
    with pytest.raises(CompactCNNError, match="batch must be >= 1"):
        table.memory("float32", 0)


def test_parse_removals():
    assert parse_removals(["conv5=10", "fc6= 3", "conv5=2"]) == {"conv5": 12, "fc6": 3}
    for bad in ["conv5", "conv5=", "=3", "conv5=x", "conv5=-1", "conv5=1.5", "conv5=²"]:
        with pytest.raises(CompactCNNError, match="malformed --remove"):
            parse_removals([bad])
