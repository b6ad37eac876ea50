"""The one place that talks to torch-pruning: its dependency graph, its groups and its handlers.

torch-pruning knows which channels are coupled (residual adds, concatenations, depthwise
convolutions). Everything else in compactcnn asks this module, so a change in torch-pruning's
behaviour shows up here, and in ``tests/test_tp_adapter.py``, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import Tensor, nn

from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
from compactcnn.layers import holds_neurons, kind_of, neuron_layer_types


def classifier_of(model: nn.Module, example_input: Tensor) -> str:
    """The last convolution or linear layer run in a forward pass.

    Its outputs are the classes, which must never be grouped or removed.
    """
    order: list[str] = []
    handles = [m.register_forward_hook(lambda *_a, n=name: order.append(n))
               for name, m in model.named_modules() if holds_neurons(m)]
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
        if why := getattr(kind_of(m), "ungroupable", None):
            raise CompactCNNError(f"'{name}' {why}")
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels > 1 \
                and m.in_channels != m.out_channels:
            # torch-pruning types every convolution with groups == out_channels as depthwise
            # and couples its inputs to its outputs one to one, which they are not here.
            raise CompactCNNError(
                f"'{name}' has groups == out_channels ({m.groups}) but {m.in_channels} inputs: "
                "torch-pruning takes it for a depthwise convolution and cannot trace its "
                "neurons; use groups < out_channels or a depthwise convolution")
    with eval_mode(model):
        try:
            return _Graph().build_dependency(model, example_inputs=example_input)
        except (TypeError, IndexError, KeyError, ValueError, AttributeError) as e:
            # torch-pruning's tracer gives up on some graphs that _tolerant_reshapes does not
            # cover: the model has no neuron groups we can trust, which is said in one line,
            # not a traceback.
            raise CompactCNNError(
                f"torch-pruning {tp.__version__} cannot trace this model's channel "
                f"dependencies ({type(e).__name__}: {e}), so its neurons cannot be grouped "
                "or removed") from e


class _Graph(tp.DependencyGraph):
    """torch-pruning's graph, with channel concatenations that feed a flatten mapped.

    torch-pruning (1.6) compares a concatenation's width with the width of its consumer, sees
    the flattened C*H*W there, decides the concatenation was on another dimension and leaves
    it unmapped: its inputs are then coupled index for index (channel 0 of one branch with
    channel 0 of the other), which is wrong. A concatenation on dimension 1 is on channels.
    The offsets are recomputed from the live layers before every group, as torch-pruning does
    for its own, so that they follow the removals.
    """

    def build_dependency(self, *args, **kwargs):
        self.unmapped: set = set()
        with _tolerant_reshapes(self.unmapped):
            graph = super().build_dependency(*args, **kwargs)
        # The longest dimension of any parameter: no channel index reaches past it.
        self.widest = max((max(p.shape) for p in self.model.parameters() if p.dim()), default=1)
        return graph

    def get_pruning_group(self, *args, **kwargs):
        _map_flattened_concats(self)
        with _tolerant_reshapes(self.unmapped), _bounded_flattens(self.widest):
            return super().get_pruning_group(*args, **kwargs)

    def get_all_groups(self, ignored_layers=(), root_module_types=()):
        """torch-pruning's groups, except that a layer whose group it cannot build (its index
        mappings run past their channels beside a channel shuffle) is left out and listed in
        ``ungrouped`` instead of failing them all, and that the roots are tried downstream
        first.

        torch-pruning tries them in its trace order, in which a concatenation's inputs may come
        before a later layer that couples all its channels (a depthwise convolution, the
        other side of an add) or after it, depending on what lies between (a norm before the
        add, say). Rooted at an input, the group holds that input's channels only and the
        other inputs get groups of their own; rooted at the coupling layer, one group holds
        them all. Downstream first, it is always the latter: one cut for coupled channels."""
        self.ungrouped: list[nn.Module] = []
        ignored = [*ignored_layers, *self.IGNORED_LAYERS_IN_TRACING]
        visited: set[nn.Module] = set()
        for m in _downstream_first(self.module2node):
            if m in ignored or m in visited or not isinstance(m, tuple(root_module_types)):
                continue
            pruner = self.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            try:
                group = self.get_pruning_group(m, pruner.prune_out_channels,
                                               list(range(pruner.get_out_channels(m))))
            except (IndexError, ValueError, ZeroDivisionError, RuntimeError):
                self.ungrouped.append(m)
                continue
            outs = [d.target.module for d, _ in group if self.is_out_channel_pruning_fn(d.handler)]
            visited.update(outs)
            if not any(o in ignored for o in outs):
                yield group


def _downstream_first(module2node: dict) -> list:
    """The graph's modules, each before every module it reads from (a depth-first post-order
    over the outputs, started in trace order)."""
    order: list = []
    done: set = set()
    for start in module2node.values():
        if start in done:
            continue
        done.add(start)
        stack = [(start, iter(start.outputs))]
        while stack:
            node, outputs = stack[-1]
            nxt = next((o for o in outputs if o not in done), None)
            if nxt is None:
                stack.pop()
                order.append(node.module)
            else:
                done.add(nxt)
                stack.append((nxt, iter(nxt.outputs)))
    return order


@contextmanager
def _tolerant_reshapes(unmapped: set) -> Iterator[None]:
    """torch-pruning (1.6) divides by zero on a reshape whose channels it cannot infer (the
    view of a channel shuffle, as in ShuffleNet), and its index lists explode past it; it
    adds None to an int on a concatenation whose inputs' widths it cannot infer (Swin's patch
    merging, four channel-last slices side by side). Such a node is added to ``unmapped`` and
    made a dead end: groups reach it and stop there (see :func:`through_unmapped`)."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_reshape_index_mapping

    def tolerant(graph, node):
        if node not in unmapped and _splits_channels(node.grad_fn):
            unmapped.add(node)
            node.dependencies.clear()
        if node in unmapped:
            return
        try:
            original(graph, node)
        except ZeroDivisionError:
            unmapped.add(node)
            node.dependencies.clear()

    original_cat = index_mapping.update_concat_index_mapping

    def tolerant_cat(graph, node):
        if node in unmapped:
            return
        try:
            original_cat(graph, node)
        except TypeError:  # an input whose width it cannot read (Swin's channel-last merge)
            unmapped.add(node)
            node.dependencies.clear()

    index_mapping.update_reshape_index_mapping = tolerant
    index_mapping.update_concat_index_mapping = tolerant_cat
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = original
        index_mapping.update_concat_index_mapping = original_cat


@contextmanager
def _bounded_flattens(limit: int) -> Iterator[None]:
    """torch-pruning (1.6) can walk a cycle of a reshape and an expand (Swin's relative
    position bias), multiplying its index list by the flatten stride on every turn, without
    end. An index list longer than any dimension of any parameter cannot name channels, so it
    is refused there, and the group's root is left ungrouped (see ``get_all_groups``)."""
    from torch_pruning.dependency import index_mapping

    cls = index_mapping._FlattenIndexMapping
    original = cls.__call__

    def bounded(self, idxs):
        out = original(self, idxs)
        if len(out) > limit:
            raise RuntimeError(f"torch-pruning's index list grew to {len(out)} channels")
        return out

    cls.__call__ = bounded
    try:
        yield
    finally:
        cls.__call__ = original


def _splits_channels(grad_fn) -> bool:
    """Whether a reshape splits channels into (groups, channels per group) or merges them
    back, as a channel shuffle does: [N, C, H, W] <-> [N, G, C/G, H, W]."""
    before = getattr(grad_fn, "_saved_self_sym_sizes", None)
    meta = getattr(grad_fn, "_input_metadata", None)
    if before is None or not meta:
        return False
    shapes = sorted([tuple(before), tuple(meta[0].shape)], key=len)
    small, large = shapes
    return len(small) == 4 and len(large) == 5 and small[0] == large[0] \
        and small[2:] == large[3:] and small[1] == large[1] * large[2] \
        and large[1] > 1 and large[2] > 1  # not an unsqueeze (local response norm has one)


def through_unmapped(graph: tp.DependencyGraph, group) -> bool:
    """Whether the group's channels reach a reshape torch-pruning could not follow, past which
    its group is incomplete."""
    unmapped = getattr(graph, "unmapped", set())
    return any(item.dep.target in unmapped for item in group)


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
    return graph.get_all_groups(ignored_layers=ignored, root_module_types=neuron_layer_types())


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


# torch-pruning's handlers are bound methods created afresh per dependency: compare with ==.
_OUT = (tp.prune_conv_out_channels, tp.prune_linear_out_channels,
        tp.prune_depthwise_conv_out_channels)
_IN = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def removes_outputs(dep) -> bool:
    """Whether a dependency cuts its layer's neurons (not its inputs, not a norm's channels)."""
    return dep.handler in _OUT


def removes_inputs(dep) -> bool:
    """Whether a dependency cuts a conv or linear layer's input channels."""
    return dep.handler in _IN


def root_rows(item) -> tuple[Tensor, Tensor]:
    """The item's root neurons and, beside each, the channel of its module that it is."""
    return (torch.tensor(item.root_idxs, dtype=torch.long),
            torch.tensor(item.idxs, dtype=torch.long))


def reach_mask(item, size: int) -> Tensor:
    """``[size]``: which of its group's ``size`` root neurons a group item reaches (all of
    them, or, for an input of a concatenation that a later layer couples, its own)."""
    mask = torch.zeros(size, dtype=torch.bool)
    mask[torch.tensor(item.root_idxs, dtype=torch.long)] = True
    return mask


def group_of(graph: tp.DependencyGraph, module: nn.Module, idxs: list[int]):
    """torch-pruning's group for removing neurons ``idxs`` of ``module``."""
    handler = tp.prune_linear_out_channels if isinstance(module, nn.Linear) \
        else tp.prune_conv_out_channels
    return graph.get_pruning_group(module, handler, idxs)


def root_groups(graph: tp.DependencyGraph, model: nn.Module, example_input: Tensor) -> list:
    """The root (module, handler) of every group of coupled neurons, classifier left out."""
    classifier = dict(model.named_modules())[classifier_of(model, example_input)]
    return [(g[0].dep.target.module, g[0].dep.handler) for g in graph.get_all_groups(
        ignored_layers=[classifier], root_module_types=neuron_layer_types())]


def apply(group) -> None:
    """torch-pruning's surgery, except for grouped convolutions' inputs, which it gets wrong
    for uneven patterns (it keeps the first indices of the flattened list)."""
    for dep, idxs in group:
        m = dep.target.module
        if dep.handler == tp.prune_conv_in_channels and m.groups > 1:
            _prune_grouped_inputs(m, idxs)
        else:
            dep(idxs)


def _prune_grouped_inputs(conv: nn.Module, idxs: list[int]) -> None:
    per_in = conv.in_channels // conv.groups
    per_out = conv.out_channels // conv.groups
    drop = torch.zeros(conv.in_channels, dtype=torch.bool)
    drop[idxs] = True
    w = conv.weight.detach()
    parts = []
    for g in range(conv.groups):
        keep = (~drop[g * per_in:(g + 1) * per_in]).nonzero().flatten()
        parts.append(w[g * per_out:(g + 1) * per_out].index_select(1, keep))
    conv.weight = nn.Parameter(torch.cat(parts))
    conv.in_channels -= len(idxs)


def group_norm_pruner(model: nn.Module, example_input: Tensor, reg: float):
    """Torch-Pruning's GroupNormPruner (the `torch-pruning` baseline), classifier left alone.

    Its ``regularize(model)`` adds the group-norm gradient between backward and the step; its
    importance ranks neurons; the removal itself is left to compactcnn's compaction so that
    every method is accounted and checked the same way.
    """
    classifier = dict(model.named_modules())[classifier_of(model, example_input)]
    with eval_mode(model):
        return tp.pruner.GroupNormPruner(
            model, example_input, importance=tp.importance.GroupMagnitudeImportance(p=2),
            reg=reg, global_pruning=True, ignored_layers=[classifier],
            root_module_types=list(neuron_layer_types()))


def pruner_importance(pruner, model: nn.Module) -> dict[str, Tensor]:
    """The pruner's importance of every neuron, by the name of its group's root layer."""
    names = {m: n for n, m in model.named_modules()}
    out = {}
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        imp = pruner.estimate_importance(group)
        if imp is not None:
            out[names[group[0].dep.target.module]] = imp.detach().cpu()
    return out
