"""Which parameter slices make up each neuron.

A neuron is one output unit of a layer: for a convolution one 3-D filter, for a linear layer
one weight row. Sparsity acts on whole neurons, so each neuron's *group* holds every scalar
that exists only because the neuron exists: its weight row and bias, the affine parameters
of the norm layer that normalises it, and, where channels are coupled (a residual add, a
concatenation, a depthwise convolution that follows its input), the matching slices of every
coupled layer. The coupling comes from torch-pruning's dependency graph; this module only
translates its groups into tensor slices that a proximal map can act on in one shot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@dataclass(frozen=True)
class Slice:
    """One parameter's share of every neuron of a group.

    Neuron ``n`` owns ``param.index_select(dim, index[n])``; with ``index=None`` it owns
    ``param.select(dim, n)``, the common case that needs no gather.
    """

    name: str
    param: nn.Parameter
    dim: int
    index: Tensor | None = None
    role: str = "out"

    def rows(self) -> Tensor:
        """The neuron-major matrix ``[neurons, elements per neuron]`` of this slice."""
        p = self.param.detach()
        if self.index is not None:
            n = self.index.shape[0]
            p = p.index_select(self.dim, self.index.reshape(-1))
            return p.movedim(self.dim, 0).reshape(n, -1)
        return p.movedim(self.dim, 0).reshape(p.shape[self.dim], -1)

    def write(self, rows: Tensor) -> None:
        """Store a neuron-major matrix (the inverse of :meth:`rows`) back, in place."""
        p = self.param.data
        if self.index is not None:
            flat = self.index.reshape(-1)
            moved_shape = list(p.movedim(self.dim, 0).shape)
            moved_shape[0] = flat.numel()
            values = rows.reshape(moved_shape).movedim(0, self.dim)
            p.index_copy_(self.dim, flat, values.to(p.dtype))
        else:
            p.movedim(self.dim, 0).copy_(rows.reshape(p.movedim(self.dim, 0).shape))

    def neuron_mask(self, keep: Tensor) -> Tensor:
        """A mask shaped like the parameter that is 0 on the slices of neurons not in ``keep``."""
        mask = torch.ones_like(self.param, dtype=torch.bool)
        moved = mask.movedim(self.dim, 0)
        if self.index is None:
            moved[~keep] = False
        else:
            moved[self.index[~keep].reshape(-1)] = False
        return mask

    @property
    def per_neuron(self) -> int:
        return self.param.numel() // self.param.shape[self.dim] * (
            1 if self.index is None else self.index.shape[1])


@dataclass
class NeuronGroup:
    """The neurons of one layer, or of several layers whose channels are coupled."""

    name: str
    layers: tuple[str, ...]
    size: int
    slices: list[Slice] = field(default_factory=list)

    def matrix(self) -> Tensor:
        """All the group's scalars, one row per neuron: the object the proximal maps shrink."""
        return torch.cat([s.rows() for s in self.slices], dim=1)

    def write(self, matrix: Tensor) -> None:
        start = 0
        for s in self.slices:
            width = s.per_neuron
            s.write(matrix[:, start:start + width])
            start += width

    @property
    def device(self) -> torch.device:
        return self.slices[0].param.device if self.slices else torch.device("cpu")

    def norms(self) -> Tensor:
        """Euclidean norm of each neuron's group, ``[neurons]``."""
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        for s in self.slices:
            total += s.rows().double().pow(2).sum(dim=1)
        return total.sqrt()

    def dead(self) -> Tensor:
        """Boolean ``[neurons]``: True where every scalar of the neuron is exactly 0.0."""
        alive = torch.zeros(self.size, dtype=torch.bool, device=self.device)
        for s in self.slices:
            alive |= s.rows().ne(0).any(dim=1)
        return ~alive

    @property
    def params(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for s in self.slices:
            seen.setdefault(id(s.param), s.param)
        return list(seen.values())

    def describe(self) -> str:
        lines = [f"group {self.name}: {self.size} neurons, "
                 f"{sum(s.per_neuron for s in self.slices)} scalars per neuron"]
        for s in self.slices:
            where = "all" if s.index is None else f"{s.index.shape[1]} per neuron"
            lines.append(f"  {s.role:3} {s.name:40} dim {s.dim}  {where}")
        return "\n".join(lines)


def classifier_of(model: nn.Module, example_input: Tensor) -> str:
    """The last convolution or linear layer run in a forward pass.

    Its outputs are the classes, which must never be grouped or removed.
    """
    order: list[str] = []
    handles = [m.register_forward_hook(lambda *_a, n=name: order.append(n))
               for name, m in model.named_modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise CompactCNNError("the model has no convolution or linear layer to make compact")
    return order[-1]


def dependency_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels > 1 \
                and m.in_channels != m.out_channels:
            # torch-pruning types every convolution with groups == out_channels as depthwise
            # and couples its inputs to its outputs one to one, which they are not here.
            raise CompactCNNError(
                f"'{name}' has groups == out_channels ({m.groups}) but {m.in_channels} inputs: "
                "torch-pruning takes it for a depthwise convolution and cannot trace its "
                "neurons; use groups < out_channels or a depthwise convolution")
    with eval_mode(model):
        return _Graph().build_dependency(model, example_inputs=example_input)


class _Graph(tp.DependencyGraph):
    """torch-pruning's graph, with channel concatenations that feed a flatten mapped.

    torch-pruning (1.6) compares a concatenation's width with the width of its consumer, sees
    the flattened C*H*W there, decides the concatenation was on another dimension and leaves
    it unmapped: its inputs are then coupled index for index (channel 0 of one branch with
    channel 0 of the other), which is wrong. A concatenation on dimension 1 is on channels.
    The offsets are recomputed from the live layers before every group, as torch-pruning does
    for its own, so that they follow the removals.
    """

    def get_pruning_group(self, *args, **kwargs):
        _map_flattened_concats(self)
        return super().get_pruning_group(*args, **kwargs)


def _map_flattened_concats(graph: tp.DependencyGraph) -> None:
    from torch_pruning import ops
    from torch_pruning.dependency import shape_infer
    from torch_pruning.dependency.index_mapping import _ConcatIndexMapping

    for node in graph.module2node.values():
        if node.type != ops.OPTYPE.CONCAT or not node.enable_index_mapping \
                or getattr(node.grad_fn, "_saved_dim", None) != 1:
            continue
        if node.module.offsets is None:
            node.module.compactcnn_flattened = True  # torch-pruning gave up on this one
        if not getattr(node.module, "compactcnn_flattened", False):
            continue
        sizes = [shape_infer.infer_channels_between(graph, n, node) for n in node.inputs]
        if any(s is None for s in sizes):
            continue
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        node.module.concat_sizes, node.module.offsets = sizes, offsets
        # The same pairing of dependencies as torch-pruning's update_concat_index_mapping.
        for reverse in (True, False):
            done: list = []
            for i, in_node in enumerate(node.inputs):
                deps, target = (node.dependencies, in_node) if reverse \
                    else (in_node.dependencies, node)
                for dep in deps:
                    if dep.target == target and not any(dep is d for d in done):
                        dep.index_mapping[1] = _ConcatIndexMapping(offset=offsets[i:i + 2],
                                                                   reverse=reverse)
                        done.append(dep)
                        break


def tp_groups(model: nn.Module, example_input: Tensor, graph: tp.DependencyGraph | None = None,
              ignore: Iterable[str] = ()) -> Iterable[tp.dependency.Group]:
    """torch-pruning's groups of the model, one per set of coupled neurons, classifier left out."""
    graph = graph or dependency_graph(model, example_input)
    modules = dict(model.named_modules())
    ignored = [modules[classifier_of(model, example_input)]]
    for name in ignore:
        if name not in modules:
            raise CompactCNNError(f"unknown layer '{name}'")
        ignored.append(modules[name])
    return graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE)


def _index(root_idxs: Sequence[int], idxs: Sequence[int], size: int) -> Tensor | None:
    """The ``[neurons, per neuron]`` gather index of one group item, or None for the identity."""
    pairs = sorted(zip(root_idxs, idxs, strict=True))
    if len(pairs) == size and all(r == i == k for k, (r, i) in enumerate(pairs)):
        return None
    counts = torch.bincount(torch.tensor([r for r, _ in pairs]), minlength=size)
    if counts.numel() != size or not bool((counts == counts[0]).all()) or counts[0] == 0:
        raise ValueError("uneven mapping")
    return torch.tensor([i for _, i in pairs]).reshape(size, -1)


def _slices_of(item, names: dict[nn.Module, str], size: int, full: bool) -> list[Slice]:
    module, handler = item.dep.target.module, item.dep.handler
    name = names.get(module)
    if name is None or not isinstance(module, nn.Module):
        return []
    outgoing = handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels,
                           tp.prune_depthwise_conv_out_channels)
    incoming = handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
    try:
        index = _index(item.root_idxs, item.idxs, size)
    except ValueError:
        return []
    slices = []

    def add(pname: str, param: nn.Parameter, dim: int, role: str) -> None:
        # The identity over the group's neurons is the whole parameter only when the layer has
        # no other channels (a norm after a concatenation or an add has those of the others).
        own = index if index is not None or param.shape[dim] == size \
            else torch.arange(size).reshape(size, 1)
        if own is not None:  # gathers need the index where the parameter lives
            own = own.to(param.device)
        slices.append(Slice(f"{name}.{pname}", param, dim, own, role))

    if isinstance(module, PRUNABLE) and outgoing:
        add("weight", module.weight, 0, "out")
        if module.bias is not None:
            add("bias", module.bias, 0, "out")
    elif isinstance(module, PRUNABLE) and incoming and full:
        grouped = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
        if not grouped:
            add("weight", module.weight, 1, "in")
    elif isinstance(module, (*_NORMS, nn.PReLU)):
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() >= 1 and p.shape[0] > 1:
                add(pname, p, 0, "out")
    return slices


def neuron_groups(model: nn.Module, example_input: Tensor, *, full: bool = False,
                  ignore: Iterable[str] = ()) -> list[NeuronGroup]:
    """One :class:`NeuronGroup` per set of coupled neurons of ``model``.

    ``full=True`` also puts each neuron's input slices of the next layer in its group, so the
    penalty sees every weight that the neuron's removal would delete (grouped convolutions'
    inputs are left out there: their slices are not one block per neuron).
    """
    names = {m: n for n, m in model.named_modules()}
    order = {n: k for k, n in enumerate(names.values())}
    groups = []
    for g in tp_groups(model, example_input, ignore=ignore):
        root = g[0].dep.target.module
        size = len(g[0].idxs)
        slices: list[Slice] = []
        layers: list[str] = []
        for item in g:
            new = _slices_of(item, names, size, full)
            slices.extend(new)
            layers.extend(s.name.rsplit(".", 1)[0] for s in new
                          if s.role == "out" and s.name.endswith(".weight")
                          and isinstance(item.dep.target.module, PRUNABLE))
        layers = sorted(dict.fromkeys(layers), key=order.__getitem__) or [names[root]]
        groups.append(NeuronGroup(layers[0], tuple(layers), size, slices))
    return sorted(groups, key=lambda g: order[g.name])


def describe(groups: Sequence[NeuronGroup]) -> str:
    """A readable listing of every group, for ``--show-groups`` and debugging."""
    return "\n".join(g.describe() for g in groups)


def grouped_conv_blocks(group: tp.dependency.Group) -> list[Tensor]:
    """For each grouped convolution in a torch-pruning group, the block of each root neuron.

    A grouped convolution must keep equal groups, so whatever is removed from its inputs or
    outputs must come evenly from these blocks. (torch-pruning slices grouped convolutions'
    inputs as if they were contiguous, which is wrong for uneven patterns; we decide the
    indices ourselves so that its surgery only ever sees even ones.)
    """
    blocks = []
    for item in group:
        m = item.dep.target.module
        if not isinstance(m, nn.modules.conv._ConvNd) or m.groups == 1 \
                or m.groups == m.out_channels == m.in_channels:
            continue
        # == and not `is`: torch-pruning hands out a fresh bound method per dependency.
        channels = m.out_channels if item.dep.handler == tp.prune_conv_out_channels \
            else m.in_channels
        per_block = channels // m.groups
        block = torch.empty(len(item.root_idxs), dtype=torch.long)
        block[torch.tensor(item.root_idxs)] = torch.tensor(item.idxs) // per_block
        blocks.append(block)
    return blocks
