"""Remove dead neurons physically: a smaller, ordinary, dense model with the same outputs.

Exactness is decided where a neuron's channel is consumed, not where it is produced. A
neuron whose producing weights are all 0.0 emits a constant. At each consumer we look at
what actually arrives (one probing forward pass): zeros can simply be dropped; a constant
can be folded into a linear consumer's bias, or a convolution's bias when the convolution
has no zero padding; anything else keeps the neuron. Every removal is then checked against
the original outputs and undone if they moved, which catches what no local rule sees
(local response normalisation across neurons, say). The report says why each kept dead
neuron was kept.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from compactcnn.accounting import NeuronTable, example_input, flops, format_table, neuron_table
from compactcnn.errors import CompactCNNError
from compactcnn.groups import PRUNABLE, classifier_of, dependency_graph, grouped_conv_blocks

_IN = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
KEPT_CONSTANT = "emits a constant that cannot be folded (zero-padded or grouped consumer)"
KEPT_VARYING = "not constant where it is consumed"
KEPT_COUPLED = "alive in a coupled layer"
KEPT_GROUPED = "a grouped convolution keeps equal groups"
KEPT_LAST = "last neuron of the layer"
KEPT_OUTPUT = "removing it would change the outputs"
KEPT_TIED = "its channel cannot be cut out (tied to the model's input, say)"
KEPT_ACROSS = "normalised across neurons on its way (LRN, LayerNorm, GroupNorm)"
# Normalisations that mix neurons: removing a zero neuron shifts the others' windows or
# changes their mean and variance, so it is never exact there, however small the effect.
_ACROSS = (nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.LayerNorm, nn.GroupNorm)


@dataclass
class GroupOutcome:
    """What happened to one set of coupled neurons."""

    name: str
    layers: tuple[str, ...]
    neurons: int
    dead: int
    removed: int
    folded: int = 0
    kept: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"name": self.name, "layers": list(self.layers), "neurons": self.neurons,
                "dead": self.dead, "removed": self.removed, "folded": self.folded,
                "kept": dict(self.kept)}


@dataclass
class CompactionReport:
    before: NeuronTable
    after: NeuronTable
    flops_before: int
    flops_after: int
    groups: list[GroupOutcome]
    max_abs_output_diff: float

    @property
    def kept(self) -> Counter:
        total: Counter = Counter()
        for g in self.groups:
            total.update(g.kept)
        return total

    def layers(self) -> list[dict]:
        after = {r.name: r.output for r in self.after.layers}
        return [{"name": r.name, "neurons_before": r.output, "neurons_after": after[r.name]}
                for r in self.before.layers if r.kind != "other"]

    def as_dict(self, dtype: str = "float32", batch: int = 1) -> dict:
        def side(t: NeuronTable, f: int) -> dict:
            return {"params": t.total_params, "neurons": t.neurons, "flops": f,
                    "memory_bytes": t.memory(dtype, batch)["total_bytes"],
                    "table": t.as_dict(dtype, batch)}
        return {"dense": side(self.before, self.flops_before),
                "compact": side(self.after, self.flops_after),
                "layers": self.layers(), "groups": [g.as_dict() for g in self.groups],
                "kept": dict(self.kept), "max_abs_output_diff": self.max_abs_output_diff}

    def format(self, dtype: str = "float32", batch: int = 1) -> str:
        b, a = self.before, self.after
        lines = ["before", format_table(b, dtype, batch), "",
                 "after", format_table(a, dtype, batch), "",
                 f"parameters {b.total_params:,} -> {a.total_params:,} "
                 f"({a.total_params / b.total_params:.1%})",
                 f"FLOPs      {self.flops_before:,} -> {self.flops_after:,} "
                 f"({self.flops_after / max(self.flops_before, 1):.1%})",
                 f"max |output(compact) - output(sparse)| = {self.max_abs_output_diff:.3g}"]
        for reason, n in sorted(self.kept.items()):
            lines.append(f"kept {n} dead neuron(s): {reason}")
        return "\n".join(lines)


def compact(model: nn.Module, example: Tensor, *, strict: bool = False,
            tol: float = 1e-5) -> tuple[nn.Module, CompactionReport]:
    """A new dense model without ``model``'s dead neurons, and a report of what was won.

    ``model`` is left untouched. The result computes the same outputs in eval mode (within
    ``tol``, relative to the output scale). ``strict=True`` fails instead of keeping one
    neuron of a layer whose neurons are all dead.
    """
    shape = tuple(example.shape[1:])
    work = copy.deepcopy(model).eval()
    # The caller's example, at its own scale, and two fixed random inputs beside it.
    probe = torch.cat([example.detach().to(torch.get_default_dtype()).cpu(),
                       example_input(shape, 2, seed=1), example_input(shape, 2, seed=2)])
    with torch.no_grad():
        reference = work(probe)
    scale = max(1.0, reference.abs().max().item())
    before = neuron_table(work, shape)
    flops_before = flops(work, shape)

    graph = dependency_graph(work, probe[:1])
    names = {m: n for n, m in work.named_modules()}
    order = {n: k for k, n in enumerate(names.values())}
    classifier = dict(work.named_modules())[classifier_of(work, probe[:1])]
    roots = [(g[0].dep.target.module, g[0].dep.handler)
             for g in graph.get_all_groups(ignored_layers=[classifier], root_module_types=PRUNABLE)]
    outcomes = []
    for module, fn in roots:
        outcomes.append(_compact_group(work, graph, names, module, fn, probe, reference,
                                       tol * scale, strict))
    outcomes.sort(key=lambda o: order[o.name])

    with torch.no_grad():
        diff = (work(probe) - reference).abs().max().item()
    report = CompactionReport(before, neuron_table(work, shape), flops_before, flops(work, shape),
                              outcomes, diff)
    work.train(model.training)
    return work, report


def _compact_group(work, graph, names, module, fn, probe, reference, tol, strict) -> GroupOutcome:
    size = graph.get_out_channels(module)
    group = graph.get_pruning_group(module, fn, list(range(size)))
    layers = tuple(sorted({names[i.dep.target.module] for i in group
                           if isinstance(i.dep.target.module, PRUNABLE)
                           and i.dep.handler not in _IN},
                          key=list(names.values()).index))
    outcome = GroupOutcome(layers[0] if layers else names[module], layers, size, 0, 0)
    silent, partly = _silent(group, size)
    if coupled := int((partly & ~silent).sum()):
        outcome.kept[KEPT_COUPLED] += coupled
    outcome.dead = int(silent.sum())
    if not outcome.dead:
        return outcome

    folds, fate = _probe(work, group, silent, probe)
    if _reaches_across(work, group, silent, probe):  # the first cause, whatever arrives
        fate = [KEPT_ACROSS if s else f for f, s in zip(fate, silent.tolist(), strict=True)]
    dead = silent & torch.tensor([not f for f in fate], dtype=torch.bool)
    outcome.kept.update(f for f in fate if f)
    blocks = grouped_conv_blocks(group)
    dead = _balance(dead, blocks, outcome)
    if bool(dead.all()):
        if strict:
            raise CompactCNNError(f"every neuron of '{outcome.name}' is dead; strict mode "
                                  "refuses to keep one")
        dead[0] = False
        outcome.kept[KEPT_LAST] += 1
        # One kept neuron leaves its grouped convolutions' groups uneven: keep one in each.
        dead = _balance(dead, blocks, outcome)
    idxs = dead.nonzero().flatten().tolist()
    if not idxs:
        return outcome

    touched = {i.dep.target.module for i in group if isinstance(i.dep.target.module, nn.Module)}
    saved = {m: _snapshot(m) for m in touched}
    try:
        for consumer, (cols, values) in folds.items():
            _fold(consumer, cols, values, dead)
        _prune(graph.get_pruning_group(module, fn, idxs))
        with torch.no_grad():
            moved = (work(probe) - reference).abs().max().item() > tol
        reason = KEPT_OUTPUT if moved else ""
    except (RuntimeError, IndexError, ValueError):  # a cut the graph could not make whole
        reason = KEPT_TIED
    if reason:
        for m, state in saved.items():
            _restore(m, state)
        outcome.kept[reason] += len(idxs)
        return outcome
    outcome.removed = len(idxs)
    folded = torch.zeros_like(dead)
    for _, values in folds.values():
        folded |= (values != 0).any(dim=-1)
    outcome.folded = int((folded & dead).sum())  # neurons, however many consumers each feeds
    return outcome


def _root_rows(item) -> tuple[Tensor, Tensor]:
    return torch.tensor(item.root_idxs, dtype=torch.long), torch.tensor(item.idxs,
                                                                         dtype=torch.long)


def _silent(group, size: int) -> tuple[Tensor, Tensor]:
    """Neurons whose producing weight rows are exactly 0.0 in every coupled layer, and in some."""
    silent = torch.ones(size, dtype=torch.bool)
    partly = torch.zeros(size, dtype=torch.bool)
    for item in group:
        m = item.dep.target.module
        if isinstance(m, PRUNABLE) and item.dep.handler not in _IN:
            roots, rows = _root_rows(item)
            zero = m.weight.detach().index_select(0, rows).flatten(1).eq(0).all(dim=1)
            silent[roots] &= zero
            partly[roots] |= zero
    return silent, partly


def _probe(work: nn.Module, group, silent: Tensor, probe: Tensor):
    """Look at what each silent neuron delivers to each consumer.

    Returns the folds to apply (consumer -> (input positions per neuron, constant values per
    neuron)) and, per neuron, the reason it must stay ("" when it may go).
    """
    size = silent.numel()
    fate = [""] * size
    consumers = [i for i in group if i.dep.handler in _IN and isinstance(i.dep.target.module,
                                                                         PRUNABLE)]
    seen: dict[nn.Module, Tensor] = {}
    hooks = [i.dep.target.module.register_forward_pre_hook(
        lambda m, inp: seen.__setitem__(m, inp[0].detach())) for i in consumers]
    try:
        with torch.no_grad():
            work(probe)
    finally:
        for h in hooks:
            h.remove()
    folds = {}
    for item in consumers:
        m = item.dep.target.module
        roots, cols = _root_rows(item)
        order = torch.argsort(roots, stable=True)
        roots, cols = roots[order], cols[order]
        per = cols.numel() // size
        cols = cols.reshape(size, per)
        x = seen[m].movedim(1, 0)[cols.flatten()].reshape(size, per, -1)
        constant = (x == x[..., :1]).all(dim=-1).all(dim=-1)
        values = x[..., 0]
        zero = constant & (values == 0).all(dim=-1)
        foldable = isinstance(m, nn.Linear) or (m.groups == 1 and _unpadded(m))
        for k in silent.nonzero().flatten().tolist():
            if fate[k] or zero[k]:
                continue
            if not constant[k]:
                fate[k] = KEPT_VARYING
            elif not foldable:
                fate[k] = KEPT_CONSTANT
        if foldable and bool((constant & ~zero & silent).any()):
            folds[m] = (cols, torch.where((constant & silent)[:, None], values, 0.0))
    return folds, fate


def _reaches_across(work: nn.Module, group, silent: Tensor, probe: Tensor) -> bool:
    """Whether the silent neurons' channels reach a normalisation across neurons.

    Found by perturbing them where they are produced and watching the normalisations' inputs.
    """
    norms = [m for m in work.modules() if isinstance(m, _ACROSS)]
    producers = [(item.dep.target.module, _root_rows(item)) for item in group
                 if isinstance(item.dep.target.module, PRUNABLE) and item.dep.handler not in _IN]
    if not norms or not producers:
        return False
    seen: dict[str, list[Tensor]] = {"plain": [], "nudged": []}  # every normalisation input
    phase = ["plain"]
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen[phase[0]].append(inp[0].detach()))
             for m in norms]

    def nudge(rows: Tensor):
        def hook(m, inp, out):
            out = out.clone()
            out[:, rows] += 1.0
            return out
        return hook

    try:
        with torch.no_grad():
            work(probe)
            for m, (roots, rows) in producers:
                rows = rows[silent[roots]]
                if rows.numel():
                    hooks.append(m.register_forward_hook(nudge(rows)))
            phase[0] = "nudged"
            work(probe)
    finally:
        for h in hooks:
            h.remove()
    return any(not torch.equal(a, b)
               for a, b in zip(seen["plain"], seen["nudged"], strict=True))


def _unpadded(conv: nn.Module) -> bool:
    """Zero padding shows a constant input as 0 at the borders, so no single bias fits."""
    return conv.padding == "valid" or (isinstance(conv.padding, tuple) and not any(conv.padding))


def _balance(dead: Tensor, blocks: list[Tensor], outcome: GroupOutcome) -> Tensor:
    """Keep as many dead neurons as needed for every grouped convolution to stay even."""
    dead = dead.clone()
    changed = True
    while changed and blocks:
        changed = False
        for block in blocks:
            n_blocks = int(block.max()) + 1
            counts = torch.bincount(block[dead], minlength=n_blocks)
            k = int(counts.min())
            for b in range(n_blocks):
                extra = (dead & (block == b)).nonzero().flatten()[k:]
                if extra.numel():
                    dead[extra] = False
                    outcome.kept[KEPT_GROUPED] += extra.numel()
                    changed = True
    return dead


def _fold(consumer: nn.Module, cols: Tensor, values: Tensor, dead: Tensor) -> None:
    """Add what the removed constant inputs contributed to the consumer's bias."""
    cols, values = cols[dead].flatten(), values[dead].flatten()
    w = consumer.weight.detach()
    if isinstance(consumer, nn.Linear):
        delta = w[:, cols] @ values
    else:
        delta = (w[:, cols].flatten(2).sum(dim=2) * values).sum(dim=1)
    if not bool(delta.ne(0).any()):
        return
    bias = consumer.bias.detach() if consumer.bias is not None else torch.zeros_like(delta)
    consumer.bias = nn.Parameter(bias + delta)


def _prune(group) -> None:
    """torch-pruning's surgery, except for grouped convolutions' inputs, which it gets wrong
    for uneven patterns (it keeps the first indices of the flattened list)."""
    for dep, idxs in group:
        m = dep.target.module
        # == and not `is`: torch-pruning hands out a fresh bound method per dependency.
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


def _snapshot(m: nn.Module) -> dict:
    return {"dict": dict(m.__dict__), "_parameters": dict(m._parameters),
            "_buffers": dict(m._buffers)}


def _restore(m: nn.Module, state: dict) -> None:
    m.__dict__.update(state["dict"])
    m._parameters = state["_parameters"]
    m._buffers = state["_buffers"]
