"""Tracing a model's layers for the neuron table: shapes from forward hooks, and the (C, H, W)
behind every flatten.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from compactcnn.accounting.table import LayerRow, NeuronTable
from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
from compactcnn.inputs import Example, as_input, shape_of
from compactcnn.layers import holds_neurons, kind_of

_FLATTENS = {torch.flatten, torch.Tensor.flatten, torch.Tensor.view, torch.Tensor.reshape,
             torch.reshape}


class _FlattenWatch(TorchFunctionMode):
    """Remembers the (C, H, W) of every feature map that a flatten turns into a vector.

    A linear layer after a flatten has neurons of shape C x H x W in the paper's table
    (AlexNet's fc6 is 6 x 6 x 256), which the linear layer itself cannot tell.
    """

    def __init__(self) -> None:
        super().__init__()
        self.origin: dict[int, tuple[int, int, int]] = {}
        self._alive: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = args[0] if args and isinstance(args[0], Tensor) else None
        if isinstance(out, Tensor) and src is not None:
            if func in _FLATTENS and src.dim() == 4 and out.dim() == 2:
                self._remember(out, tuple(src.shape[1:]))
            elif id(src) in self.origin and out.shape == src.shape:
                self._remember(out, self.origin[id(src)])
        return out

    def _remember(self, t: Tensor, chw: tuple[int, int, int]) -> None:
        self.origin[id(t)] = chw
        self._alive.append(t)


def _trace(model: nn.Module, x: Tensor) -> list[LayerRow]:
    rows: dict[str, dict] = {}
    producer_of: dict[int, str] = {}
    claimed: set[nn.Module] = set()
    keep: list[Tensor] = []
    watch = _FlattenWatch()

    def prunable_hook(name: str):
        def hook(m: nn.Module, inputs, out: Tensor) -> None:
            chw = watch.origin.get(id(inputs[0])) if inputs else None
            # A layer's output is never a flattened map, even when it has the same shape as
            # its input (a square linear layer right after a flatten).
            watch.origin.pop(id(out), None)
            rows[name] = kind_of(m).row(m, out, chw)
            rows[name].update(bias=m.bias is not None, norm_per_neuron=0)
            producer_of[id(out)] = name
            keep.append(out)
        return hook

    def norm_hook(m: nn.Module, inputs, out: Tensor) -> None:
        owner = producer_of.get(id(inputs[0])) if inputs else None
        n_params = sum(p.numel() for p in m.parameters(recurse=False))
        if owner and n_params % max(rows[owner]["output"], 1) == 0 and m not in claimed:
            rows[owner]["norm_per_neuron"] += n_params // rows[owner]["output"]
            claimed.add(m)

    handles = []
    for name, m in model.named_modules():
        if holds_neurons(m):
            handles.append(m.register_forward_hook(prunable_hook(name)))
        elif any(True for _ in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(norm_hook))
    try:
        with eval_mode(model), torch.no_grad(), watch:
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = [LayerRow(name=n, **r) for n, r in rows.items()]
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        # A layer that the forward pass never ran (an auxiliary head, say) has no traced
        # shape; its parameters still count, as parameters outside any traced neuron.
        if own and m not in claimed and name not in rows:
            out.append(_other_row(name, own))
    return out


def _other_row(name: str, params: list[nn.Parameter]) -> LayerRow:
    """A row for parameters outside any neuron; per-channel ones still shrink with a cascade."""
    channels = {p.shape[0] for p in params if p.dim() >= 1}
    total = sum(p.numel() for p in params)
    if len(channels) == 1 and all(p.dim() == 1 for p in params):
        c = channels.pop()
        return LayerRow(name, "other", 0, 0, 0, c, 1, False, total // c, 0)
    return LayerRow(name, "other", 0, 0, 0, 0, 1, False, 0, 0, other_params=total)


def neuron_table(model: nn.Module, example: Example, name: str = "model") -> NeuronTable:
    """Trace ``model`` on ``example`` (a batch, or a (C, H, W) shape) and list its layers.

    Only shapes are read, so a model and a batch on the meta device give the same table
    without allocating anything, whatever the input size.
    """
    input_shape = shape_of(example)
    try:
        rows = _trace(model, as_input(model, example)[:1])
    except RuntimeError as e:
        raise CompactCNNError(f"{name} does not accept input {list(input_shape)}: "
                              f"{str(e).splitlines()[0]}") from None
    if not any(r.kind != "other" for r in rows):
        raise CompactCNNError(f"{name} has no convolution or linear layer to tabulate")
    return NeuronTable(name, tuple(input_shape), tuple(rows))
