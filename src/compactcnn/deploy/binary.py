"""Binary networks: XNOR-Net style training layers, and the bit-packed path that deploys them.

A binary layer keeps float ("latent") weights for the optimizer and computes with their signs,
times one real scale per neuron, the mean |w| of that neuron (XNOR-Net's optimal scale for a
sign approximation). With binary activations its input is binarised too, so that at inference
the whole dot product is XNOR and popcount on bits (:mod:`compactcnn.deploy.bitpack`).

The layers compute ``conv(sign(x), sign(w)) * scale + bias`` in that order, not with a scaled
weight: the integer part is then exact in float32 (sums of ±1 stay below 2**24), and the packed
path reproduces the two float32 roundings that follow, so packed and torch outputs agree to the
last bit rather than to a tolerance that a later sign() could turn into a flipped activation.

Binary activations need centred inputs: sign() of a ReLU output is +1 everywhere (sign(0) = +1).
:func:`binarize_model` only swaps layers, so put batch norm, not ReLU, right before a layer that
is to be binarised (XNOR-Net's order: BN, binary activation, binary conv, pool).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactcnn.deploy.bitpack import binary_conv2d, binary_linear, pack_signs
from compactcnn.evalmode import eval_mode


class _SignSTE(torch.autograd.Function):
    """sign with the straight-through estimator of Hubara et al. (the gradient of hardtanh)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype) * 2 - 1

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: Tensor) -> Tensor:
    """±1 (sign(0) = +1, as a bit holds no zero); gradient passed where |x| <= 1, else zero.

    sign has zero gradient almost everywhere; passing it through unchanged lets the latent
    weights learn, and cutting it beyond |x| > 1 stops weights that no longer flip from drifting.
    """
    return _SignSTE.apply(x)


def neuron_scale(weight: Tensor) -> Tensor:
    """Mean |w| of each neuron (dim 0): the scale that best fits the weights by their signs."""
    return weight.abs().mean(dim=tuple(range(1, weight.dim())))


class BinaryConv2d(nn.Conv2d):
    """A Conv2d that computes with sign(w) times a per-filter scale, and optionally sign(x).

    A subclass, so that code which walks convolutions (accounting, grouping) still sees one.
    """

    def __init__(self, *args: object, binary_input: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError("binary convolutions support zero padding only")
        self.binary_input = binary_input

    def forward(self, x: Tensor) -> Tensor:
        if self.binary_input:
            x = sign_ste(x)
        out = F.conv2d(x, sign_ste(self.weight), None, self.stride, self.padding, self.dilation,
                       self.groups)
        out = out * neuron_scale(self.weight).view(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, binary_input={self.binary_input}"


class BinaryLinear(nn.Linear):
    """A Linear that computes with sign(w) times a per-neuron scale, and optionally sign(x)."""

    def __init__(self, *args: object, binary_input: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.binary_input = binary_input

    def forward(self, x: Tensor) -> Tensor:
        if self.binary_input:
            x = sign_ste(x)
        out = F.linear(x, sign_ste(self.weight)) * neuron_scale(self.weight)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, binary_input={self.binary_input}"


def _binarisable(module: nn.Module) -> bool:
    """Plain Conv2d/Linear only, and convolutions the packed kernels can run (groups=1,
    dilation=1, numeric zero padding); subclasses may have a forward of their own to keep."""
    if type(module) is nn.Linear:
        return True
    return (type(module) is nn.Conv2d and module.groups == 1 and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _to_binary(module: nn.Module, binary_input: bool) -> nn.Module:
    weight = module.weight
    factory = {"device": weight.device, "dtype": weight.dtype}
    has_bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        layer = BinaryConv2d(module.in_channels, module.out_channels, module.kernel_size,
                             stride=module.stride, padding=module.padding, bias=has_bias,
                             binary_input=binary_input, **factory)
    else:
        layer = BinaryLinear(module.in_features, module.out_features, bias=has_bias,
                             binary_input=binary_input, **factory)
    layer.load_state_dict(module.state_dict())
    layer.train(module.training)
    return layer


def _replace(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``name`` is in ``root``; return the root, ``new`` itself for name ''."""
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent), child, new)
    return root


def _execution_order(model: nn.Module, example: Tensor) -> list[nn.Module]:
    """Conv2d/Linear modules in the order a forward pass first calls them.

    Registration order is not execution order (a ResNet may define its classifier before its
    blocks, or a shortcut after the branch it joins), and "first" and "last" are about data flow.
    """
    order: list[nn.Module] = []
    seen: set[int] = set()

    def record(module: nn.Module, args: object, output: object) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:  # eval mode: the example must not move batch-norm statistics
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def binarize_model(model: nn.Module, example: Tensor, first_last_full_precision: bool = True,
                   binary_activations: bool = True) -> nn.Module:
    """A copy of ``model`` with its Conv2d/Linear layers replaced by binary ones.

    The first and last layers stay float by default, as in XNOR-Net and BinaryNet: they hold few
    of the weights, and binarising them costs accuracy out of proportion to what it saves (the
    first sees raw pixels, the last produces the logits). ``example`` is one input batch, used
    to find execution order.
    Layers the packed kernels cannot run (grouped, dilated, 'same' padding, subclasses) stay float.
    """
    result = copy.deepcopy(model)
    order = _execution_order(result, example)
    if first_last_full_precision:
        order = order[1:-1]
    names = {module: name for name, module in result.named_modules()}
    return binarize_layers(result, {names[m]: binary_activations for m in order
                                    if _binarisable(m)})


def binarize_layers(model: nn.Module, layers: Mapping[str, bool]) -> nn.Module:
    """Replace the named Conv2d/Linear layers of ``model`` in place by binary ones, with binary
    input where ``layers`` says True; return the model (a new object only for the name '').

    This is how a saved binary model is rebuilt from its float latent weights: the file names
    its binary layers rather than storing a second copy of the network's structure.
    """
    for name, binary_input in layers.items():
        module = model.get_submodule(name)
        if not _binarisable(module):
            raise ValueError(f"{name!r} is a {type(module).__name__}, which cannot be binarised")
        model = _replace(model, name, _to_binary(module, binary_input))
    return model


def binary_layers(model: nn.Module) -> dict[str, bool]:
    """The binary layers of ``model`` by name, each with whether its input is binarised."""
    return {name: m.binary_input for name, m in model.named_modules()
            if isinstance(m, (BinaryConv2d, BinaryLinear))}


def _numpy(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


class _PackedConv2d(nn.Module):
    """A BinaryConv2d with binary input, its weights packed once, run by the NumPy kernels."""

    def __init__(self, layer: BinaryConv2d) -> None:
        super().__init__()
        if layer.groups != 1 or layer.dilation != (1, 1) or isinstance(layer.padding, str):
            raise ValueError("packed convolutions need groups=1, dilation=1, numeric padding")
        self.packed, self.n = pack_signs(_numpy(layer.weight).reshape(layer.out_channels, -1))
        self.scale = _numpy(neuron_scale(layer.weight))
        self.bias = _numpy(layer.bias)
        self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding

    def forward(self, x: Tensor) -> Tensor:
        out = binary_conv2d(_numpy(x), self.packed, self.n, self.scale, self.bias,
                            self.kernel_size, self.stride, self.padding)
        return torch.from_numpy(out).to(x.device)


class _PackedLinear(nn.Module):
    """A BinaryLinear with binary input, its weights packed once, run by the NumPy kernels."""

    def __init__(self, layer: BinaryLinear) -> None:
        super().__init__()
        self.packed, self.n = pack_signs(_numpy(layer.weight))
        self.scale = _numpy(neuron_scale(layer.weight))
        self.bias = _numpy(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        rows = _numpy(x).reshape(-1, self.n)  # Linear accepts any leading dimensions
        out = binary_linear(rows, self.packed, self.n, self.scale, self.bias)
        return torch.from_numpy(out).reshape(*x.shape[:-1], -1).to(x.device)


class PackedBinaryModel(nn.Module):
    """Inference through bit-packed kernels for binary layers with binary input; torch for the
    rest (float layers, and binary layers fed real inputs, which XNOR cannot compute).

    Built from a copy in eval mode, so later training of ``model`` does not change it; its
    outputs equal ``model.eval()(x)`` bit for bit (see the module docstring for why).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for name, module in list(self.model.named_modules()):
            if isinstance(module, BinaryConv2d) and module.binary_input:
                packed: nn.Module = _PackedConv2d(module)
            elif isinstance(module, BinaryLinear) and module.binary_input:
                packed = _PackedLinear(module)
            else:
                continue
            self.model = _replace(self.model, name, packed)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(x)
