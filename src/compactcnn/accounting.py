"""The per-layer neuron table: the paper's Table 1, derived from any model by tracing it.

Each neuron of a layer is an order-3 tensor (width x height x input), and the layer has
``output`` of them. Removing neurons from layer i removes inputs of layer i+1, so the table
can also predict, by arithmetic alone, what a removal saves (:func:`cascade`). That
prediction is independent of the surgery in :mod:`compactcnn.compaction`, which lets each
check the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
from compactcnn.groups import PRUNABLE, classifier_of, dependency_graph, grouped_conv_blocks

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
_FLATTENS = {torch.flatten, torch.Tensor.flatten, torch.Tensor.view, torch.Tensor.reshape,
             torch.reshape}


@dataclass(frozen=True)
class LayerRow:
    """One layer of the table.

    ``params`` of a convolution or linear layer counts its weights, its bias and the affine
    parameters of the norm layer that normalises it (``norm_per_neuron`` per neuron), so that
    removing a neuron removes everything it owns. Rows of kind ``other`` hold parameters
    that belong to no neuron of a convolution or linear layer (a norm after an add, say).
    """

    name: str
    kind: str
    width: int
    height: int
    input: int
    output: int
    groups: int
    bias: bool
    norm_per_neuron: int
    out_hw: int
    other_params: int = 0
    depth: int = 1  # the third kernel side of a 3-D convolution (not a column of the table)

    @property
    def params(self) -> int:
        if self.kind == "other":
            return self.other_params + self.output * self.norm_per_neuron
        per_neuron = (self.width * self.height * self.depth * self.input + self.bias
                      + self.norm_per_neuron)
        return self.output * per_neuron

    @property
    def feature_map(self) -> int:
        return self.output * self.out_hw if self.kind != "other" else 0

    def as_dict(self) -> dict:
        keys = ("name", "kind", "width", "height", "input", "output", "groups")
        return {k: getattr(self, k) for k in keys} | {"params": self.params,
                                                       "feature_map": self.feature_map}


@dataclass(frozen=True)
class NeuronTable:
    model: str
    input: tuple[int, int, int]
    layers: tuple[LayerRow, ...]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def total_feature_map(self) -> int:
        return sum(r.feature_map for r in self.layers)

    @property
    def neurons(self) -> int:
        return sum(r.output for r in self.layers if r.kind != "other")

    def row(self, name: str) -> LayerRow:
        for r in self.layers:
            if r.name == name:
                return r
        raise CompactCNNError(f"unknown layer '{name}'; layers: "
                              + ", ".join(r.name for r in self.layers if r.kind != "other"))

    def memory(self, dtype: str = "float32", batch: int = 1) -> dict:
        """Bytes of the parameters plus bytes of every layer's output feature maps."""
        if dtype not in DTYPE_BYTES:
            raise CompactCNNError(f"unknown dtype '{dtype}'; choose one of: "
                                  + ", ".join(DTYPE_BYTES))
        if batch < 1:
            raise CompactCNNError(f"batch must be >= 1, got {batch}")
        size = DTYPE_BYTES[dtype]
        params = self.total_params * size
        maps = self.total_feature_map * batch * size
        return {"dtype": dtype, "batch": batch, "params_bytes": params,
                "feature_maps_bytes": maps, "total_bytes": params + maps}

    def as_dict(self, dtype: str = "float32", batch: int = 1) -> dict:
        return {"model": self.model, "input": list(self.input),
                "layers": [r.as_dict() for r in self.layers],
                "total_params": self.total_params, "memory": self.memory(dtype, batch)}


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
            if isinstance(m, nn.Linear):
                c, h, w = chw if chw else (m.in_features, 1, 1)
                rows[name] = dict(kind="linear", width=w, height=h, input=c,
                                  output=m.out_features, groups=1,
                                  out_hw=math.prod(out.shape[1:-1]))
            else:
                k = m.kernel_size
                rows[name] = dict(kind="conv", width=k[-1], height=k[-2] if len(k) > 1 else 1,
                                  depth=math.prod(k[:-2]),
                                  input=m.in_channels // m.groups, output=m.out_channels,
                                  groups=m.groups, out_hw=math.prod(out.shape[2:]))
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
        if isinstance(m, PRUNABLE):
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


def example_input(input_shape: tuple[int, ...], batch: int = 1, seed: int = 0) -> Tensor:
    """A fixed random input: tracing only needs shapes, exactness checks need varied values."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_shape, generator=g)


def neuron_table(model: nn.Module, input_shape: tuple[int, int, int],
                 name: str = "model") -> NeuronTable:
    """Trace ``model`` on one input of ``input_shape`` (C, H, W) and list its layers."""
    try:
        rows = _trace(model, _input_for(model, input_shape))
    except RuntimeError as e:
        raise CompactCNNError(f"{name} does not accept input {list(input_shape)}: "
                              f"{str(e).splitlines()[0]}") from None
    if not any(r.kind != "other" for r in rows):
        raise CompactCNNError(f"{name} has no convolution or linear layer to tabulate")
    return NeuronTable(name, tuple(input_shape), tuple(rows))


def _input_for(model: nn.Module, input_shape: tuple[int, ...]) -> Tensor:
    """:func:`example_input` on the model's device, so that a model built on the ``meta``
    device can be counted without allocating its weights."""
    x = example_input(input_shape)
    for t in (*model.parameters(), *model.buffers()):
        return x.to(t.device)
    return x


def parse_removals(specs: list[str]) -> dict[str, int]:
    """``["conv5=10", ...]`` -> ``{"conv5": 10}``, the CLI's ``--remove LAYER=N``."""
    out: dict[str, int] = {}
    for spec in specs:
        layer, sep, n = spec.partition("=")
        if not sep or not layer or not _is_count(n.strip()):
            raise CompactCNNError(f"malformed --remove '{spec}': expected LAYER=N, e.g. conv5=10")
        out[layer] = out.get(layer, 0) + int(n)
    return out


def _is_count(text: str) -> bool:
    """Plain ASCII digits: ``str.isdigit`` also accepts "²", which ``int`` then refuses."""
    return text.isascii() and text.isdigit()


def cascade(model: nn.Module, table: NeuronTable, remove: Mapping[str, int]) -> NeuronTable:
    """The table after removing ``remove[layer]`` neurons of each layer, by arithmetic.

    Coupled layers (a residual add, a concatenation, a depthwise convolution) lose the same
    neurons, and every consumer loses the matching inputs: N of them, N * h * w across a
    flatten, or N / groups per neuron of a grouped convolution. Neurons are taken evenly
    from the groups of a grouped convolution, as the physical removal must.
    """
    x = _input_for(model, table.input)
    graph = dependency_graph(model, x)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    classifier = classifier_of(model, x)
    rows = {r.name: r for r in table.layers}
    touched: dict[str, str] = {}
    for layer, n in remove.items():
        row = table.row(layer)
        if row.kind == "other":
            raise CompactCNNError(f"layer '{layer}' has no neurons to remove")
        if layer == classifier:
            raise CompactCNNError(f"layer '{layer}' is the classifier: its outputs are the classes")
        if n <= 0 or n >= row.output:
            raise CompactCNNError(f"cannot remove {n} of the {row.output} neurons of '{layer}': "
                                  f"remove between 1 and {row.output - 1}")
        module = modules[layer]
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) \
            else tp.prune_conv_out_channels
        whole = graph.get_pruning_group(module, fn, list(range(row.output)))
        idxs = _evenly(grouped_conv_blocks(whole), row.output, n, layer)
        for item in graph.get_pruning_group(module, fn, idxs):
            target = names.get(item.dep.target.module)
            if target not in rows:
                continue
            r, k = rows[target], len(item.idxs)
            if _is_out(item.dep.handler):
                if touched.get(target, layer) != layer:
                    raise CompactCNNError(f"'{layer}' is coupled with '{touched[target]}': "
                                          "remove neurons from only one of them")
                touched[target] = layer
                dw = r.kind == "conv" and r.groups == r.output and r.groups > 1
                rows[target] = replace(r, output=r.output - k,
                                       groups=r.groups - k if dw else r.groups)
            elif r.kind == "conv":
                rows[target] = replace(r, input=r.input - k // r.groups)
            elif r.kind == "linear":
                rows[target] = replace(r, input=r.input - k // (r.width * r.height))
    return replace(table, layers=tuple(rows[r.name] for r in table.layers))


def _is_out(handler) -> bool:
    return handler not in (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def _evenly(blocks: list[Tensor], size: int, n: int, layer: str) -> list[int]:
    """``n`` neuron indices, the same number from every block of every grouped convolution."""
    if not blocks:
        return list(range(size - n, size))
    key = torch.stack(blocks, dim=1)
    cells: dict[tuple, list[int]] = {}
    for i, k in enumerate(key.tolist()):
        cells.setdefault(tuple(k), []).append(i)
    per, rest = divmod(n, len(cells))
    if rest or any(len(c) <= per for c in cells.values()):
        raise CompactCNNError(f"'{layer}' is coupled to a grouped convolution: remove a "
                              f"multiple of {len(cells)} neurons, fewer than {size}")
    return sorted(i for c in cells.values() for i in c[len(c) - per:])


def flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Floating-point operations of one forward pass at batch 1 (a multiply-add counts 2)."""
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(_input_for(model, input_shape))
    return int(counter.get_total_flops())


def format_table(table: NeuronTable, dtype: str = "float32", batch: int = 1) -> str:
    """The table as the paper prints it, with totals and the memory footprint."""
    head = ("layer", "kind", "width", "height", "input", "output", "groups", "parameters",
            "feature map")
    body = [(r.name, r.kind, *(str(v) if r.kind != "other" else "" for v in
                               (r.width, r.height, r.input)),
             str(r.output) if r.output else "", str(r.groups) if r.kind != "other" else "",
             f"{r.params:,}", f"{r.feature_map:,}" if r.kind != "other" else "")
            for r in table.layers]
    body.append(("total", "", "", "", "", f"{table.neurons:,}", "", f"{table.total_params:,}",
                 f"{table.total_feature_map:,}"))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [f"{table.model}  input {'x'.join(map(str, table.input))}", fmt.format(*head),
             fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*b) for b in body[:-1]]
    lines += [fmt.format(*("-" * w for w in widths)), fmt.format(*body[-1])]
    mem = table.memory(dtype, batch)
    lines.append(f"memory footprint ({dtype}, batch {batch}): parameters "
                 f"{_mib(mem['params_bytes'])} + feature maps {_mib(mem['feature_maps_bytes'])}"
                 f" = {_mib(mem['total_bytes'])}")
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n:,} B ({n / 2**20:.2f} MiB)"
