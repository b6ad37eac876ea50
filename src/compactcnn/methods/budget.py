"""Budgets ("10% of the parameters", "a quarter of the FLOPs") and what a pattern of dead
neurons costs, known exactly at every step without compacting anything.

Dead neurons are removed exactly, so a model's compact size follows from its dead counts alone:
removing ``d`` neurons of a group takes ``d`` times one neuron's share of every layer's outputs
and inputs (its own row, the coupled layers' rows, the next layers' input columns). The
:class:`CostModel` measures that share once per group, through the neuron table's cascade,
and then prices any dead pattern with a few array operations.

Under a low-rank penalty a layer's size also depends on its rank: compaction factorises a
layer of rank r into an r-output layer and a 1x1 (or Linear) layer wherever that is smaller
(:mod:`compactcnn.surgery.factorise`). A ``ranked`` cost model reads each ungrouped layer's
rank, with factorisation's own tolerance, whenever it reads the dead counts, and prices the
layer at the smaller of its dense and its factorised size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from compactcnn.accounting.cascade import cascade
from compactcnn.accounting.table import NeuronTable
from compactcnn.accounting.trace import neuron_table
from compactcnn.errors import CompactCNNError
from compactcnn.inputs import Example
from compactcnn.sparsity.neurons import NeuronGroup
from compactcnn.surgery.factorise import RANK_TOL

METRICS = ("params", "flops")


@dataclass(frozen=True)
class Budget:
    """Upper bounds on the compact model, as fractions of the dense model's figures."""

    params: float | None = None
    flops: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"params=0.10"``, ``"flops=0.25"`` or both, comma-separated."""
        values: dict[str, float] = {}
        for part in text.split(","):
            key, sep, value = part.strip().partition("=")
            if not sep or key not in METRICS:
                raise CompactCNNError(f"malformed target '{text}': expected params=F and/or "
                                      "flops=F, e.g. params=0.10")
            try:
                fraction = float(value)
            except ValueError:
                raise CompactCNNError(f"target {key}={value!r} is not a number") from None
            if not (math.isfinite(fraction) and 0 < fraction <= 1):
                raise CompactCNNError(f"target {key}={value} must be a fraction in (0, 1]")
            values[key] = fraction
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{k}={getattr(self, k):g}" for k in METRICS if getattr(self, k))

    @property
    def joint(self) -> bool:
        """Both metrics bounded: each may bind while the other has room."""
        return self.params is not None and self.flops is not None

    def excess(self, fractions: Mapping[str, float]) -> float:
        """How far above the budget ``fractions`` are, relative to it (<= 0: met)."""
        return max((fractions[k] / getattr(self, k) - 1 for k in METRICS
                    if getattr(self, k) is not None), default=-1.0)

    def room(self, fractions: Mapping[str, float]) -> float:
        """How far below the budget the roomiest metric lies, relative to it: under a joint
        budget one metric may bind while the other still has room."""
        return max((1 - fractions[k] / getattr(self, k) for k in METRICS
                    if getattr(self, k) is not None), default=0.0)

    def met(self, fractions: Mapping[str, float]) -> bool:
        return self.excess(fractions) <= 0


class CostModel:
    """Parameters and FLOPs of the compact model for any number of dead neurons per group.

    Exact for groups whose neurons are interchangeable in cost (every plain, residual and
    concatenated layer); for a group tied to a grouped convolution it is the average over the
    minimal even removal.
    """

    def __init__(self, model: nn.Module, example: Example, groups: list[NeuronGroup],
                 ranked: bool = False) -> None:
        self.groups = groups
        self.table: NeuronTable = neuron_table(model, example)
        rows = self.table.layers
        # Rank-priced layers: ungrouped convolutions and linears (grouped ones are priced dense).
        self._ranked = [(i, model.get_submodule(r.name)) for i, r in enumerate(rows)
                        if ranked and r.kind != "other" and r.groups == 1]
        self.ranks = torch.full((len(rows),), math.inf, dtype=torch.float64)
        self._out = torch.tensor([r.output for r in rows], dtype=torch.float64)
        self._in = torch.tensor([r.input for r in rows], dtype=torch.float64)
        self._kernel = torch.tensor([r.width * r.height * r.depth if r.kind != "other" else 0
                                     for r in rows], dtype=torch.float64)
        self._own = torch.tensor([(r.bias + r.norm_per_neuron) if r.kind != "other"
                                  else r.norm_per_neuron for r in rows], dtype=torch.float64)
        self._hw = torch.tensor([r.out_hw for r in rows], dtype=torch.float64)
        self._other = sum(r.other_params for r in rows)
        d_out, d_in = [], []
        for g in groups:
            removed, after = _one_step(model, self.table, g)
            pairs = list(zip(rows, after, strict=True))
            d_out.append([(a.output - b.output) / removed for a, b in pairs])
            d_in.append([(a.input - b.input) / removed for a, b in pairs])
        self._d_out = torch.tensor(d_out, dtype=torch.float64).reshape(len(groups), len(rows))
        self._d_in = torch.tensor(d_in, dtype=torch.float64).reshape(len(groups), len(rows))
        self.dense = self.absolute(torch.zeros(len(groups)))

    def absolute(self, dead: Tensor, full_rank: bool = False) -> dict[str, float]:
        """Parameters and FLOPs with ``dead[g]`` neurons removed from group ``g``; with
        ``full_rank``, every layer priced dense, whatever ranks were read."""
        dead = dead.to(torch.float64)
        out = self._out - dead @ self._d_out
        inp = self._in - dead @ self._d_in
        fan_in = inp * self._kernel
        rank = torch.minimum(out, fan_in)
        if not full_rank:
            rank = torch.minimum(self.ranks, rank)
        weights = torch.minimum(out * fan_in, rank * (fan_in + out))  # dense, or the pair
        params = weights + out * self._own
        flops = 2 * weights * self._hw
        return {"params": float(params.sum()) + self._other, "flops": float(flops.sum())}

    def ranked(self) -> list[tuple[int, nn.Module]]:
        """The rank-priced layers: (row of the neuron table, module), for a ranked model."""
        return list(self._ranked)

    def full_ranks(self, dead: Tensor) -> Tensor:
        """Each layer's largest possible rank with ``dead[g]`` neurons removed from group g."""
        dead = dead.to(torch.float64)
        out = self._out - dead @ self._d_out
        return torch.minimum(out, (self._in - dead @ self._d_in) * self._kernel)

    def widened_by(self, g: int) -> Tensor:
        """The neuron table's rows (layers) whose size changes with group ``g``'s neurons: its
        own layers and their consumers."""
        return ((self._d_out[g] != 0) | (self._d_in[g] != 0)).nonzero().flatten()

    def fractions(self, dead: Tensor, full_rank: bool = False) -> dict[str, float]:
        """The same, as fractions of the dense model's."""
        now = self.absolute(dead, full_rank)
        return {k: now[k] / self.dense[k] for k in METRICS}

    def dense_fractions(self) -> dict[str, float]:
        return self.fractions(torch.zeros(len(self.groups)))

    def dead_counts(self) -> Tensor:
        """Dead neurons per group, read from the parameters as they are now (and, for a
        ranked model, each layer's rank, which prices every later call)."""
        for i, module in self._ranked:
            self.ranks[i] = float(weight_rank(module.weight))
        return self.dead_neurons()

    def dead_neurons(self) -> Tensor:
        """Dead neurons per group, without reading ranks (no SVD: cheap at every step)."""
        return torch.tensor([int(g.dead().sum()) for g in self.groups], dtype=torch.float64)

    def per_neuron(self, metric: str) -> Tensor:
        """What one more dead neuron of each group saves now (the marginal cost), ``[groups]``."""
        dead = self.dead_counts()
        base = self.absolute(dead)[metric]
        saved = []
        for k in range(len(self.groups)):
            more = dead.clone()
            more[k] += 1
            saved.append(base - self.absolute(more)[metric])
        return torch.tensor(saved, dtype=torch.float64)


def _one_step(model: nn.Module, table: NeuronTable, group: NeuronGroup):
    """The table after removing the fewest neurons of ``group`` that the cascade accepts
    (one, or one per block of a grouped convolution), and how many that was."""
    for removed in range(1, group.size):
        try:
            return removed, cascade(model, table, {group.name: removed}).layers
        except CompactCNNError:
            continue
    return 1, table.layers  # a one-neuron group: nothing can be removed


def weight_rank(weight: Tensor) -> int:
    """The rank factorisation reads: singular values above its tolerance times the largest."""
    s = torch.linalg.svdvals(weight.detach().flatten(1).double().cpu())
    return max(1, int((s > RANK_TOL * s.max()).sum())) if len(s) else 1
