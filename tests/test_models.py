"""The model zoo: published parameter counts, the shared calling convention, and traceability."""

from __future__ import annotations

import functools

import pytest
import torch
import torch_pruning as tp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactcnn.errors import CompactCNNError
from compactcnn.models import create, defaults, min_input_size, names, options
from compactcnn.models.alexnet import AlexNet
from compactcnn.models.lenet import LeNet5
from compactcnn.models.squeezenet import SqueezeNet
from compactcnn.models.vgg import VGGSmall

ALL = [
    "alexnet",
    "gray_hist",
    "gray_hist_cnn",
    "gray_hist_colour",
    "lenet5",
    "lenet5_filtermap",
    "mlp",
    "resnet18",
    "resnet20",
    "resnet56",
    "squeezenet1_0",
    "vgg11",
    "vgg16",
    "vgg_small",
    "vgg_small_filtermap",
]

TOTALS = {
    "alexnet": 60_965_224,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "squeezenet1_0": 1_248_424,
    "lenet5": 431_080,
    "vgg_small": 585_066,
    "mlp": 545_810,
    "lenet5_filtermap": 43_103,
    "vgg_small_filtermap": 58_503,
    "gray_hist": 32_170,
    "gray_hist_cnn": 18_346,
    "gray_hist_colour": 14_538,
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def small(name: str) -> nn.Module:
    """Each model once, at its smallest input: VGG-16 alone takes seconds to initialise."""
    return create(name, num_classes=7, input_size=min_input_size(name)).eval()


def example(name: str, batch: int) -> torch.Tensor:
    size = min_input_size(name)
    return torch.randn(batch, defaults(name)["in_channels"], size, size)


def test_names_are_sorted_and_complete() -> None:
    assert names() == ALL


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_parameter_totals_at_defaults(name: str) -> None:
    # Shapes only: the meta device skips allocating and initialising 138M VGG weights.
    with torch.device("meta"):
        model = create(name)
    assert count(model) == TOTALS[name]


def test_alexnet_has_caffe_layer_names_and_two_towers() -> None:
    with torch.device("meta"):
        model = create("alexnet")
    for layer in ["conv1", "conv2", "conv3", "conv4", "conv5"]:
        assert isinstance(getattr(model, layer), nn.Conv2d)
    for layer in ["fc6", "fc7", "fc8"]:
        assert isinstance(getattr(model, layer), nn.Linear)
    assert [getattr(model, f"conv{i}").groups for i in range(1, 6)] == [1, 2, 1, 2, 2]
    assert model.fc6.in_features == 256 * 6 * 6


def test_defaults_are_the_documented_ones_and_a_copy() -> None:
    assert defaults("alexnet") == {"num_classes": 1000, "in_channels": 3, "input_size": 227}
    assert defaults("lenet5") == {"num_classes": 10, "in_channels": 1, "input_size": 28}
    assert defaults("resnet56") == {"num_classes": 10, "in_channels": 3, "input_size": 32}
    assert defaults("gray_hist") == {"num_classes": 10, "in_channels": 3, "input_size": 32}
    defaults("mlp")["num_classes"] = 99
    assert defaults("mlp")["num_classes"] == 10


def test_options_are_declared_recorded_and_checked() -> None:
    assert options("lenet5") == {}
    assert options("lenet5_filtermap") == {"fraction": 0.10}
    assert options("gray_hist") == {"bins": 8, "widths": [8, 16, 64]}
    options("gray_hist")["bins"] = 3
    assert options("gray_hist")["bins"] == 8
    # Every option is recorded, given or not, so that a model file can rebuild the model.
    model = create("lenet5_filtermap", fraction=0.05)
    assert model.compactcnn_spec == {"name": "lenet5_filtermap", "num_classes": 10,
                                     "in_channels": 1, "input_size": 28, "fraction": 0.05}
    assert count(model) == 21_540
    assert create("lenet5").compactcnn_spec == {"name": "lenet5", "num_classes": 10,
                                                "in_channels": 1, "input_size": 28}
    assert count(create("gray_hist", bins=4, widths=[4, 8, 32])) == 8_250
    with pytest.raises(CompactCNNError, match=r"^lenet5 has no option 'fraction'; it has none$"):
        create("lenet5", fraction=0.1)
    with pytest.raises(CompactCNNError, match=r"^gray_hist has no option 'parts'; its options "
                                              r"are bins, widths$"):
        create("gray_hist", parts="cnn")
    for bad in ({"fraction": 1.5}, {"fraction": "0.1"}):
        with pytest.raises(CompactCNNError, match="fraction must be between 0 and 1"):
            create("lenet5_filtermap", **bad)
    for bad in ({"widths": [8, 16]}, {"widths": [8, 0, 64]}, {"bins": 0}, {"bins": 2.5}):
        with pytest.raises(CompactCNNError):
            create("gray_hist", **bad)


@pytest.mark.parametrize("name", ALL)
def test_forward_at_smallest_input(name: str) -> None:
    with torch.no_grad():
        out = small(name)(example(name, batch=2))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_torch_pruning_traces_every_layer(name: str) -> None:
    model = small(name)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example(name, batch=1))
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers
    assert all(layer in graph.module2node for layer in layers)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(CompactCNNError) as info:
        create("foo")
    assert str(info.value) == f"unknown model 'foo'; choose one of: {', '.join(ALL)}"
    with pytest.raises(CompactCNNError, match="unknown model 'bar'"):
        defaults("bar")


@pytest.mark.parametrize("name", [n for n in ALL if n != "mlp"])
def test_input_below_the_minimum_is_refused(name: str) -> None:
    smallest = min_input_size(name)
    with pytest.raises(CompactCNNError) as info:
        create(name, input_size=smallest - 1)
    assert str(info.value) == f"{name} needs input_size >= {smallest}, got {smallest - 1}"


# The layers themselves, called without the registry's size check.
RAW = {
    "alexnet": lambda size: AlexNet(7, 3, size),
    "lenet5": lambda size: LeNet5(7, 1, size),
    "squeezenet1_0": lambda size: SqueezeNet(7, 3),
    "vgg_small": lambda size: VGGSmall(7, 1, size),
}


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("name", sorted(RAW))
def test_minimum_is_what_the_layers_need(name: str) -> None:
    # The forward test shows the minimum works; here one pixel less breaks the bare layers, so
    # the check refuses nothing that would have run.
    size = min_input_size(name) - 1
    channels = defaults(name)["in_channels"]
    with pytest.raises(RuntimeError):
        RAW[name](size).eval()(torch.randn(1, channels, size, size))


def test_alexnet_message_names_the_minimum() -> None:
    with pytest.raises(CompactCNNError, match="alexnet needs input_size >= 67, got 63"):
        create("alexnet", input_size=63)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"in_channels": -1},
        {"input_size": 0},
        {"num_classes": True},
        {"num_classes": 2.0},
    ],
)
def test_non_positive_or_non_integer_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(CompactCNNError, match="must be a positive integer"):
        create("lenet5", **kwargs)


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "squeezenet1_0", "vgg_small"])
def test_initialisation_is_deterministic_under_a_seed(name: str) -> None:
    torch.manual_seed(0)
    first = create(name, input_size=min_input_size(name)).state_dict()
    torch.manual_seed(0)
    second = create(name, input_size=min_input_size(name)).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["lenet5", "mlp", "vgg_small"]),
    num_classes=st.integers(2, 20),
    in_channels=st.integers(1, 3),
    data=st.data(),
)
def test_output_shape_follows_the_arguments(
    name: str, num_classes: int, in_channels: int, data: st.DataObject
) -> None:
    size = data.draw(st.integers(min_input_size(name), 40), label="input_size")
    model = create(name, num_classes=num_classes, in_channels=in_channels, input_size=size)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, in_channels, size, size))
    assert out.shape == (1, num_classes)
