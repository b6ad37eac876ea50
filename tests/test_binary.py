"""Binary layers: STE gradients, model conversion, training, and the packed inference path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from compactcnn.deploy.binary import (
    BinaryConv2d,
    BinaryLinear,
    PackedBinaryModel,
    binarize_model,
    neuron_scale,
    sign_ste,
)


def sign(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def xnor_cnn() -> nn.Sequential:
    """For 1 x 28 x 28: batch norm, not ReLU, before each layer to binarise (centred inputs)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(8),
        nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, 3, stride=2), nn.BatchNorm2d(16), nn.Flatten(),
        nn.Linear(16 * 3 * 3, 70), nn.BatchNorm1d(70), nn.Linear(70, 10),
    )


class HeadFirst(nn.Module):
    """Registers its classifier before its body, and joins a shortcut: registration order is
    not execution order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8 * 4 * 4, 10)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 8, 1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(F.max_pool2d(self.stem(x), 2))
        x = self.branch(x) + self.shortcut(x)
        x = F.max_pool2d(self.depthwise(x), 2)
        return self.head(x.flatten(1))


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-3, 3, width=32), min_size=1, max_size=50))
def test_ste_passes_the_gradient_where_the_input_is_within_one(values: list[float]) -> None:
    x = torch.tensor(values, requires_grad=True)
    upstream = torch.randn(len(values))
    y = sign_ste(x)
    y.backward(upstream)
    assert torch.equal(y, sign(x.detach()))
    assert torch.equal(x.grad, torch.where(x.detach().abs() <= 1, upstream, 0.0))


def test_ste_maps_zero_to_plus_one_and_passes_its_gradient() -> None:
    x = torch.tensor([0.0, 1.0, -1.0, 1.0001], requires_grad=True)
    sign_ste(x).sum().backward()
    assert sign_ste(x.detach()).tolist() == [1.0, 1.0, -1.0, 1.0]
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_layers_compute_with_signs_and_one_scale_per_neuron() -> None:
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, stride=2, padding=1)
    linear = BinaryLinear(12, 5, binary_input=False)
    x, v = torch.randn(2, 3, 7, 7), torch.randn(2, 12)
    want_conv = F.conv2d(sign(x), sign(conv.weight), stride=2, padding=1)
    want_conv = want_conv * conv.weight.abs().mean((1, 2, 3)).view(1, -1, 1, 1)
    torch.testing.assert_close(conv(x), want_conv + conv.bias.view(1, -1, 1, 1))
    want_linear = F.linear(v, sign(linear.weight)) * neuron_scale(linear.weight)
    torch.testing.assert_close(linear(v), want_linear + linear.bias)
    assert isinstance(conv, nn.Conv2d) and isinstance(linear, nn.Linear)


def test_binary_convolutions_refuse_padding_they_do_not_compute() -> None:
    with pytest.raises(ValueError, match="zero padding"):
        BinaryConv2d(1, 1, 3, padding=1, padding_mode="reflect")


def test_binarize_keeps_first_and_last_in_execution_order_and_the_original_untouched() -> None:
    model = HeadFirst()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    binary = binarize_model(model, torch.randn(2, 1, 16, 16))
    assert type(binary.stem) is nn.Conv2d and type(binary.head) is nn.Linear
    assert isinstance(binary.branch, BinaryConv2d) and isinstance(binary.shortcut, BinaryConv2d)
    assert type(binary.depthwise) is nn.Conv2d  # grouped: the packed kernels do groups=1 only
    assert torch.equal(binary.branch.weight, model.branch.weight)
    assert all(type(m) in (nn.Conv2d, nn.Linear, nn.BatchNorm2d, HeadFirst)
               for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats unmoved


def test_binarize_everything_and_float_activations_on_request() -> None:
    binary = binarize_model(xnor_cnn(), torch.randn(2, 1, 28, 28),
                            first_last_full_precision=False, binary_activations=False)
    layers = [m for m in binary.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in layers)
    assert not any(m.binary_input for m in layers)


def synthetic(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Ten fixed noisy templates: learnable in a few steps, so falling loss means learning."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, 10, (n,), generator=g)
    return templates[labels] + 0.8 * torch.randn(n, 1, 28, 28, generator=g), labels


def test_binarised_model_trains() -> None:
    torch.manual_seed(0)
    x, y = synthetic(256, seed=1)
    model = binarize_model(xnor_cnn(), x[:2])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        batch = slice(64 * (step % 4), 64 * (step % 4 + 1))
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    assert model[4].weight.grad is not None and model[4].weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def trained_binary() -> nn.Module:
    """A binarised net with non-trivial batch-norm statistics and latent weights."""
    torch.manual_seed(0)
    x, y = synthetic(128, seed=2)
    model = binarize_model(xnor_cnn(), x[:2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_packed_forward_equals_the_float_forward(trained_binary: nn.Module) -> None:
    x, _ = synthetic(64, seed=3)
    packed = PackedBinaryModel(trained_binary)
    assert sum(type(m).__name__.startswith("_Packed") for m in packed.modules()) == 3
    with torch.no_grad():
        want = trained_binary(x)
    got = packed(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_packed_layers_are_bit_exact(trained_binary: nn.Module) -> None:
    """The guarantee the module docstring makes: the same float32 roundings, so no tolerance."""
    packed = PackedBinaryModel(trained_binary)
    x = torch.randn(8, 8, 14, 14)
    with torch.no_grad():
        assert torch.equal(packed.model[4](x), trained_binary[4](x))
        v = torch.randn(8, 16 * 3 * 3)
        assert torch.equal(packed.model[10](v), trained_binary[10](v))


def test_packed_model_handles_shortcuts_and_float_inputs() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    model = binarize_model(HeadFirst(), x[:2]).eval()
    model.shortcut.binary_input = False  # a real-input binary layer stays in torch
    packed = PackedBinaryModel(model)
    assert isinstance(packed.model.shortcut, BinaryConv2d)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), rtol=1e-4, atol=1e-6)


def test_a_bare_layer_is_binarised_and_packed_too() -> None:
    x = torch.randn(3, 130)
    binary = binarize_model(nn.Linear(130, 4), x, first_last_full_precision=False)
    assert isinstance(binary, BinaryLinear)
    packed = PackedBinaryModel(binary)
    with torch.no_grad():
        assert torch.equal(packed(x), binary(x))
