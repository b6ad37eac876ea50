"""What the compaction tests share: dead neurons made as the optimizer makes them, the checks
that a compaction left the model alone and agrees with its report, and small building blocks.

The dead neurons are made the way the proximal optimizer leaves them: every scalar of the
neuron's group (weight rows, bias, norm affine parameters, coupled layers) set to 0.0 through
:func:`compactcnn.sparsity.neuron_groups`. Norm layers get non-trivial running statistics, so a
zero neuron is not trivially zero after its BatchNorm unless the group really is.
"""

from __future__ import annotations

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


def assert_report_consistent(model, small, report, killed: dict[str, int] | None = None,
                             exact: bool = True):
    """What the report says agrees with the models and with itself.

    ``killed`` neurons (per group of :func:`neuron_groups`) are the dead ones the report must
    find, each either dead or alive in a coupled layer; with ``exact=False`` only an upper
    bound on their number.
    """
    for g in report.groups:
        from_dead = sum(n for reason, n in g.kept.items() if reason != KEPT_COUPLED)
        assert g.removed + from_dead == g.dead, g
        assert 0 <= g.folded <= g.removed
    if killed is not None and exact:
        # A killed neuron is dead, or alive in a coupled layer that neuron_groups leaves out
        # of its group (one only some of the group's neurons reach: a concatenation into an add).
        # Such a group is named after its first layer with slices; compaction's, its first.
        found = {g.name: g.dead + g.kept[KEPT_COUPLED] for g in report.groups}
        expected = {g.name: sum(n for k, n in killed.items() if k in g.layers)
                    for g in report.groups}
        assert {k: v for k, v in found.items() if v} == {k: v for k, v in expected.items() if v}
        assert sum(found.values()) == sum(killed.values())
    elif killed is not None:
        assert sum(g.dead for g in report.groups) <= sum(killed.values())
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
