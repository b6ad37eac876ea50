"""Replace layers of low rank by two thinner layers, where that saves parameters exactly.

Group sparsity removes whole neurons; a low-rank penalty instead leaves the surviving neurons
spanning fewer directions than they could. A layer whose weight, reshaped to
``[neurons, fan-in]``, has rank r with ``r * (fan-in + neurons) < neurons * fan-in`` is stored
as a :class:`~compactcnn.layers.factorised.Factorised` pair. So the two compose: compaction
removes dead neurons first, then this step factorises the survivors where it pays.

The rank is read from the weight's singular values: those exactly zero or below ``rank_tol``
times the largest do not count. Grouped convolutions factor per group, at the largest rank
any of their groups needs, so both halves stay grouped convolutions with the original groups
(a depthwise convolution never pays). As in compaction, every factorisation is checked on the
outputs of the whole model and undone if they moved by more than ``tol``: all at once first,
and by bisection only when that fails, so an exact model costs one extra forward pass.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from compactcnn.accounting.flops import flops
from compactcnn.accounting.table import NeuronTable
from compactcnn.accounting.text import format_table
from compactcnn.accounting.trace import neuron_table
from compactcnn.inputs import Example, as_input, example_input, shape_of
from compactcnn.layers.factorised import FACTORABLE, Factorised

FACTORISED = "factorised"
KEPT_RANK = "its rank does not pay"
KEPT_OUTPUT = "factorising it would change the outputs"
KEPT_NONFINITE = "its weight is not finite"


@dataclass
class LayerFactorisation:
    """One candidate layer: its weight's shape per group, its rank, and what became of it."""

    name: str
    neurons: int
    fan_in: int
    groups: int
    rank: int
    params_before: int
    params_after: int
    outcome: str

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class FactorisationReport:
    before: NeuronTable
    after: NeuronTable
    flops_before: int
    flops_after: int
    layers: list[LayerFactorisation]
    max_abs_output_diff: float

    @property
    def factorised(self) -> list[LayerFactorisation]:
        return [f for f in self.layers if f.outcome == FACTORISED]

    def as_dict(self, dtype: str = "float32", batch: int = 1) -> dict:
        def side(t: NeuronTable, f: int) -> dict:
            return {"params": t.total_params, "neurons": t.neurons, "flops": f,
                    "memory_bytes": t.memory(dtype, batch)["total_bytes"],
                    "table": t.as_dict(dtype, batch)}
        return {"before": side(self.before, self.flops_before),
                "after": side(self.after, self.flops_after),
                "layers": [f.as_dict() for f in self.layers],
                "max_abs_output_diff": self.max_abs_output_diff}

    def format(self, dtype: str = "float32", batch: int = 1) -> str:
        b, a = self.before, self.after
        lines = [format_table(a, dtype, batch), ""]
        for f in self.layers:
            per = f" per group of {f.groups}" if f.groups > 1 else ""
            lines.append(f"{f.name}: rank {f.rank} of {min(f.neurons // f.groups, f.fan_in)}{per} "
                         f"({f.neurons} neurons x {f.fan_in} inputs), "
                         + (f"{f.params_before:,} -> {f.params_after:,} parameters"
                            if f.outcome == FACTORISED else f"kept: {f.outcome}"))
        lines += [f"parameters {b.total_params:,} -> {a.total_params:,} "
                  f"({a.total_params / b.total_params:.1%})",
                  f"FLOPs      {self.flops_before:,} -> {self.flops_after:,} "
                  f"({self.flops_after / max(self.flops_before, 1):.1%})",
                  f"max |output(factorised) - output(before)| = {self.max_abs_output_diff:.3g}"]
        return "\n".join(lines)


@dataclass
class _Plan:
    """A candidate's factors, kept until the outputs have been checked."""

    entry: LayerFactorisation
    layer: nn.Module
    pair: Factorised | None


RANK_TOL = 1e-6  # singular values at or below this times the largest do not count


def factorise(model: nn.Module, example: Example, *, tol: float = 1e-5,
              rank_tol: float = RANK_TOL) -> tuple[nn.Module, FactorisationReport]:
    """A new model whose low-rank layers are factorised pairs, and a report of each layer.

    ``model`` is left untouched. The result computes the same outputs in eval mode (within
    ``tol``, relative to the output scale, on ``example`` and two fixed random inputs).
    """
    shape = shape_of(example)
    work = copy.deepcopy(model).eval()
    example = as_input(work, example)
    probe = torch.cat([example.detach().to(torch.get_default_dtype()).cpu(),
                       example_input(shape, 2, seed=1), example_input(shape, 2, seed=2)])
    with torch.no_grad():
        reference = work(probe)
    scale = max(1.0, reference.abs().max().item())
    before, flops_before = neuron_table(work, shape), flops(work, shape)

    plans = [_plan(name, m, rank_tol) for name, m in _candidates(work)]
    _accept(work, [p for p in plans if p.pair is not None], probe, reference, tol * scale)

    with torch.no_grad():
        diff = (work(probe) - reference).abs().max().item()
    report = FactorisationReport(before, neuron_table(work, shape), flops_before,
                                 flops(work, shape), [p.entry for p in plans], diff)
    work.train(model.training)
    return work, report


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Plain convolutions and linear layers, each used once, not already half of a pair."""
    uses: dict[int, int] = {}
    for m in model.modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    halves = {id(c) for m in model.modules() if isinstance(m, Factorised) for c in m}
    return [(name, m) for name, m in model.named_modules()
            if type(m) in FACTORABLE and uses[id(m)] == 1 and id(m) not in halves]


def _plan(name: str, layer: nn.Module, rank_tol: float) -> _Plan:
    """Read the rank per group and build the pair, if its parameter count pays."""
    weight = layer.weight.detach()
    groups = getattr(layer, "groups", 1)
    neurons, fan_in = weight.shape[0] // groups, math.prod(weight.shape[1:])
    bias = layer.bias.numel() if layer.bias is not None else 0
    entry = LayerFactorisation(name, neurons * groups, fan_in, groups, 0,
                               weight.numel() + bias, weight.numel() + bias, KEPT_RANK)
    if not bool(weight.isfinite().all()):  # no SVD; the outputs could not be checked either
        entry.outcome = KEPT_NONFINITE
        return _Plan(entry, layer, None)
    blocks = weight.reshape(groups, neurons, fan_in).to(torch.float64)
    u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
    # Exact zeros never count (s > a non-negative bound); an all-zero weight still needs rank 1.
    entry.rank = max(1, int((s > rank_tol * s.max()).sum(dim=1).max()))
    if groups * entry.rank * (fan_in + neurons) + bias >= entry.params_before:
        return _Plan(entry, layer, None)
    root = s[:, : entry.rank].sqrt()
    # A zero row of the weight is a zero row of U_r S_r exactly; the SVD only rounds it to
    # nearly zero. Writing the zeros keeps a dead neuron that compaction kept exactly dead.
    alive = blocks.ne(0).any(dim=2, keepdim=True)
    left = (u[..., : entry.rank] * root[:, None, :] * alive).to(weight.dtype)
    right = (root[..., None] * vh[:, : entry.rank]).to(weight.dtype)
    pair = Factorised.of(layer, left, right)
    return _Plan(entry, layer, pair)


def _accept(work: nn.Module, plans: list[_Plan], probe: Tensor, reference: Tensor,
            tol: float) -> None:
    """Swap every pair in, then undo the ones the outputs refuse: the whole batch if it passes,
    otherwise each half in turn, down to single layers."""
    if not plans:
        return
    for p in plans:
        _swap(work, p.entry.name, p.pair)
    with torch.no_grad():
        moved = not (work(probe) - reference).abs().max().item() <= tol  # NaN moves too
    if not moved:
        for p in plans:
            p.entry.outcome = FACTORISED
            p.entry.params_after = sum(t.numel() for t in p.pair.parameters())
        return
    for p in plans:
        _swap(work, p.entry.name, p.layer)
    if len(plans) == 1:
        plans[0].entry.outcome = KEPT_OUTPUT
        return
    half = len(plans) // 2
    _accept(work, plans[:half], probe, reference, tol)
    _accept(work, plans[half:], probe, reference, tol)


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
