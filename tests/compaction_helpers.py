"""What the compaction tests share: dead neurons made as the optimizer makes them, the checks
that a compaction left the model alone and agrees with its report, and small building blocks.

The dead neurons are made the way the proximal optimizer leaves them: every scalar of the
neuron's group (weight rows, bias, norm affine parameters, coupled layers) set to 0.0 through
:func:`compactcnn.sparsity.neuron_groups`. Norm layers get non-trivial running statistics, so a
zero neuron is not trivially zero after its BatchNorm unless the group really is.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

import torch
from torch import nn

from compactcnn.sparsity import neuron_groups
from compactcnn.surgery.outcome import KEPT_COUPLED


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from their initial 0/1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def kill(model: nn.Module, example: torch.Tensor, fraction: float | dict[str, float],
         seed: int = 0) -> dict[str, int]:
    """Zero random neurons, all of each one's group, as the optimizer does; how many per group."""
    g = torch.Generator().manual_seed(seed)
    killed = {}
    for group in neuron_groups(model, example):
        p = fraction.get(group.name, 0.0) if isinstance(fraction, dict) else fraction
        dead = torch.rand(group.size, generator=g) < p
        matrix = group.matrix()
        matrix[dead] = 0.0
        group.write(matrix)
        killed[group.name] = int(dead.sum())
    return killed


def max_diff(a: nn.Module, b: nn.Module, shape: tuple[int, ...], seed: int = 123,
             batch: int = 6, scale: float = 1.0) -> float:
    """max |a(x) - b(x)| on fresh random inputs, relative to the output scale when above 1."""
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed)) * scale
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return (ya - yb).abs().max().item() / max(1.0, ya.abs().max().item())


def snapshot(model: nn.Module) -> dict:
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "training": {n: m.training for n, m in model.named_modules()},
            "shapes": {k: tuple(p.shape) for k, p in model.named_parameters()}}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["shapes"] == before["shapes"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


def widths(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def assert_report_consistent(model, small, report, killed: dict[str, int] | None = None):
    """What the report says agrees with the models and with itself.

    ``killed`` neurons (per group of :func:`neuron_groups`) are the dead ones the report must
    find, each either dead or alive in a coupled layer.
    """
    for g in report.groups:
        from_dead = sum(n for reason, n in g.kept.items() if reason != KEPT_COUPLED)
        assert g.removed + from_dead == g.dead, g
        assert 0 <= g.folded <= g.removed
    if killed is not None:
        # A killed neuron is dead, or alive in a coupled layer that its group of neuron_groups
        # does not hold. neuron_groups splits a group of compaction's whose layers reach only
        # some of its neurons (the inputs of a concatenation that a later layer couples) into
        # one per input, each named after its first layer; compaction's is one, named after
        # its first layer, and holds them all.
        found = {g.name: g.dead + g.kept[KEPT_COUPLED] for g in report.groups}
        expected = {g.name: sum(n for k, n in killed.items() if k in g.layers)
                    for g in report.groups}
        assert {k: v for k, v in found.items() if v} == {k: v for k, v in expected.items() if v}
        assert sum(found.values()) == sum(killed.values())
    d = report.as_dict()
    json.dumps(d)
    before, after = widths(model), widths(small)
    for row in d["layers"]:
        assert before[row["name"]] == row["neurons_before"]
        assert after[row["name"]] == row["neurons_after"]
    assert d["dense"]["params"] == count(model)
    assert d["compact"]["params"] == count(small)
    assert d["max_abs_output_diff"] == report.max_abs_output_diff
    removed = sum(g.removed for g in report.groups)
    if removed:
        assert report.flops_after < report.flops_before
        assert d["compact"]["params"] < d["dense"]["params"]
    # A group whose layers are its own (no other group shares them) and hold all of its neurons
    # (no concatenation splits them) takes exactly its removed neurons out of every layer.
    # Shared and split layers lose neurons of several groups, which the report does not map.
    owners = Counter(n for g in report.groups for n in g.layers)
    for g in report.groups:
        if all(before[n] == g.neurons and owners[n] == 1 for n in g.layers):
            assert all(before[n] - after[n] == g.removed for n in g.layers), g


def expected_widths(model: Net, channels: int) -> dict[str, int]:
    """Every layer's width after compaction, worked out from ``model``'s zeros and the rules
    alone (neither neuron_groups, torch-pruning nor the report is asked). ``model`` is a
    :class:`Net` of the random test's blocks; ``channels`` its input's.

    A *neuron* is a set of channels that must go together: a layer's output channel, tied to
    its input channel by a depthwise convolution after it, or to the other input of a
    residual add. It can go when it is not the model's input and wherever it is consumed (a
    convolution, a linear layer) it delivers a constant (a dead producer's bias, a zero norm
    scale's shift, through activations and pools) that is zero, or that the consumer folds
    into its bias (a linear layer, an unpadded ungrouped convolution). Of those, as many go
    as these rules allow:

    * every layer keeps a neuron;
    * a grouped convolution keeps equal groups: each *group* of neurons removes equally many
      from each of its blocks of inputs, and of outputs. A group is one cut: a layer's
      neurons, merged with the others' by a depthwise convolution or an add that couples
      them. So the inputs of a concatenation straight into a grouped convolution are
      balanced each on its own (removing from one input's block alone leaves the groups
      uneven), while through a depthwise convolution or an add they are balanced together.
    """
    t = _Neurons()
    names = {m: n for n, m in model.named_modules()}
    xs = [(t.new(tied=True), None) for _ in range(channels)]
    for m in model.body:
        if isinstance(m, nn.Conv2d):
            xs = t.conv(names[m], m, xs)
        elif isinstance(m, nn.BatchNorm2d):
            xs = _norm(m, xs)
        elif isinstance(m, (nn.ReLU, nn.Identity, nn.Sigmoid)):
            xs = _apply(m, xs)
        elif isinstance(m, Residual):
            h = _apply(nn.ReLU(), _norm(m.bn1, t.conv(names[m.conv1], m.conv1, xs)))
            h = _norm(m.bn2, t.conv(names[m.conv2], m.conv2, h))
            xs = [(t.couple(a, b), None if u is None or v is None else
                   float(torch.relu(torch.tensor(u) + torch.tensor(v))))
                  for (a, u), (b, v) in zip(xs, h, strict=True)]
        elif isinstance(m, Concat):
            ys = t.conv(names[m.left], m.left, xs) + t.conv(names[m.right], m.right, xs)
            xs = _norm(m.bn, _apply(nn.ReLU(), ys))
        elif not isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):  # pools keep constants
            raise TypeError(f"expected_widths does not know {type(m).__name__}")
    # A global average pool or none, then a flatten: each feature of a channel is the channel.
    if model.fc1 is not None:
        xs = _apply(nn.ReLU(), t.linear("fc1", model.fc1, xs))
    t.consume(xs, foldable=True)
    go = t.removable()
    return {**{name: sum(t.find(c) not in go for c in cls) for name, cls in t.layers.items()},
            "fc2": model.fc2.out_features}


def _norm(m: nn.Module, xs: list) -> list:
    """A BatchNorm in eval mode on constants; a zero scale makes its shift the constant."""
    if isinstance(m, nn.Identity):
        return xs
    out = []
    for j, (c, v) in enumerate(xs):
        w, b = m.weight.detach()[j], m.bias.detach()[j]
        if w == 0:
            v = float(b)
        elif v is not None:
            v = float((v - m.running_mean[j]) / torch.sqrt(m.running_var[j] + m.eps) * w + b)
        out.append((c, v))
    return out


def _apply(f: nn.Module, xs: list) -> list:
    return [(c, None if v is None else float(f(torch.tensor(v)))) for c, v in xs]


class _Neurons:
    """Neurons as they are traced: union-find over channels (the neuron) and over neurons (the
    group), what each consumer receives, and the blocks of each grouped convolution."""

    def __init__(self) -> None:
        self.parent: list[int] = []  # channel -> its neuron
        self.cut: list[int] = []  # channel -> its group
        self.tied: set[int] = set()
        self.layers: dict[str, list[int]] = {}  # layer -> its output channels
        self.uses: list[tuple[int, float | None, bool]] = []  # channel, constant, foldable
        self.blocks: list[list[list[int]]] = []  # per grouped conv's inputs and outputs

    def new(self, tied: bool = False, cut: int | None = None) -> int:
        c = len(self.parent)
        self.parent.append(c)
        self.cut.append(c if cut is None else cut)
        if tied:
            self.tied.add(c)
        return c

    @staticmethod
    def _root(parent: list[int], c: int) -> int:
        while parent[c] != c:
            c = parent[c]
        return c

    def find(self, c: int) -> int:
        return self._root(self.parent, c)

    def group(self, c: int) -> int:
        return self._root(self.cut, self.cut[self.find(c)])

    def couple(self, a: int, b: int) -> int:
        """Channels ``a`` and ``b`` are one neuron, and their groups one group."""
        a, b = self.find(a), self.find(b)
        ga, gb = self.group(a), self.group(b)
        self.cut[gb] = ga
        self.parent[b] = a
        if b in self.tied:
            self.tied.add(a)
        return a

    def consume(self, xs: list, foldable: bool) -> None:
        self.uses += [(c, v, foldable) for c, v in xs]

    def produce(self, name: str, m: nn.Module) -> list:
        """A layer's output channels: constant (its bias) where its weight row is all zero."""
        zero = m.weight.detach().flatten(1).eq(0).all(dim=1).tolist()
        first = len(self.parent)
        out = [(self.new(cut=first), (0.0 if m.bias is None else float(m.bias.detach()[j])) if z
                else None) for j, z in enumerate(zero)]
        self.layers[name] = [c for c, _ in out]
        return out

    def linear(self, name: str, m: nn.Linear, xs: list) -> list:
        self.consume(xs, foldable=True)
        return self.produce(name, m)

    def conv(self, name: str, m: nn.Conv2d, xs: list) -> list:
        if m.groups == m.in_channels == m.out_channels > 1:  # depthwise: channel to channel
            out = self.produce(name, m)
            for (a, _), (b, _) in zip(xs, out, strict=True):
                self.couple(a, b)  # and so one group for all its channels
            return out
        self.consume(xs, foldable=m.groups == 1 and not any(m.padding))
        out = self.produce(name, m)
        if m.groups > 1:
            for side in (xs, out):
                n = len(side) // m.groups
                self.blocks.append([[c for c, _ in side[k * n:(k + 1) * n]]
                                    for k in range(m.groups)])
        return out

    def removable(self) -> set[int]:
        """The neurons that go: each constant where consumed, then as many as the rules
        allow (tried exhaustively over the few that grouped convolutions tie together)."""
        go = {self.find(c) for c in range(len(self.parent))} - {self.find(c) for c in self.tied}
        for c, v, foldable in self.uses:
            if v is None or (v != 0 and not foldable):
                go.discard(self.find(c))
        layers = [{self.find(c) for c in cls} for cls in self.layers.values()]
        # One constraint per grouped conv's side and group: equal counts in every block.
        constraints = []
        for blocks in self.blocks:
            roots = [[self.find(c) for c in b] for b in blocks]
            for g in {self.group(r) for b in roots for r in b}:
                constraints.append([{r for r in b if self.group(r) == g} for b in roots])
        tied_up = {r for con in constraints for b in con for r in b} & go
        free = go - tied_up
        for layer in sorted(layers, key=len):  # smallest first: its kept neuron may do for more
            if layer <= free:
                free.discard(min(layer))
        # Independent sets of tied neurons (sharing a constraint or a layer), each tried
        # exhaustively for the most that can go.
        parts: list[set[int]] = []
        for linked in [set().union(*con) for con in constraints] + layers:
            linked = linked & tied_up
            if linked:
                touching = [p for p in parts if p & linked]
                parts = [p for p in parts if not p & linked] + [set().union(linked, *touching)]
        go = set(free)
        for part in parts:
            for n in range(len(part), 0, -1):
                picks = (set(p) for p in itertools.combinations(sorted(part), n))
                pick = next((p for p in picks if self._allowed(free | p, constraints, layers)),
                            None)
                if pick is not None:
                    go |= pick
                    break
        return go

    @staticmethod
    def _allowed(chosen: set[int], constraints: list, layers: list[set[int]]) -> bool:
        return all(len({len(b & chosen) for b in con}) == 1 for con in constraints) \
            and not any(layer <= chosen for layer in layers)


def dead_with_bias(layer: nn.Module, neurons: list[int], bias: float) -> None:
    with torch.no_grad():
        layer.weight[neurons] = 0.0
        if bias is not None:
            layer.bias[neurons] = bias


class Residual(nn.Module):
    def __init__(self, c: int, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(c) if bn else nn.Identity()

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


class Concat(nn.Module):
    def __init__(self, c: int, a: int, b: int, bn_after: bool) -> None:
        super().__init__()
        self.left = nn.Conv2d(c, a, 1)
        self.right = nn.Conv2d(c, b, 3, padding=1)
        self.bn = nn.BatchNorm2d(a + b) if bn_after else nn.Identity()

    def forward(self, x):
        return self.bn(torch.relu(torch.cat([self.left(x), self.right(x)], 1)))


class Net(nn.Module):
    def __init__(self, body: list[nn.Module], flat: int, hidden: int, pool: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.pool = pool
        self.fc1 = nn.Linear(flat, hidden) if hidden else None
        self.fc2 = nn.Linear(hidden or flat, 3)

    def forward(self, x):
        x = torch.flatten(self.pool(self.body(x)), 1)
        if self.fc1 is not None:
            x = torch.relu(self.fc1(x))
        return self.fc2(x)
