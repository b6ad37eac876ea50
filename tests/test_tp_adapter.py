"""torch-pruning's behaviour that compactcnn's adapter relies on or works around.

Each test pins one fact about torch-pruning. When an upgrade changes one, the test fails with a
message that says which part of ``sparsity/tp_adapter.py`` to revisit, instead of compaction
silently going wrong somewhere downstream.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from packaging.requirements import Requirement
from torch import nn

from compactcnn import models
from compactcnn.sparsity import neuron_groups
from compactcnn.sparsity.tp_adapter import apply, dependency_graph

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_the_installed_torch_pruning_is_one_the_project_supports():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    spec = next(Requirement(d) for d in project["project"]["dependencies"]
                if d.startswith("torch-pruning"))
    assert any(s.operator == "<" for s in spec.specifier), "pin an upper bound: its graph " \
        "internals are patched by the adapter"
    assert version("torch-pruning") in spec.specifier


class _ConcatFlatten(nn.Module):
    """Two branches of 3 and 5 channels, concatenated on channels, flattened into a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3), nn.Conv2d(1, 5, 3)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], dim=1).flatten(1))


def _fc_inputs_of_branch_b(graph, model) -> list[int]:
    group = graph.get_pruning_group(model.b, tp.prune_conv_out_channels, [0])
    return sorted(i for dep, idxs in group if dep.target.module is model.fc for i in idxs)


def test_plain_torch_pruning_still_maps_a_concat_before_a_flatten_wrongly():
    model, x = _ConcatFlatten(), torch.randn(1, 1, 6, 6)
    plain = _fc_inputs_of_branch_b(tp.DependencyGraph().build_dependency(model, x), model)
    ours = _fc_inputs_of_branch_b(dependency_graph(model, x), model)
    assert ours == list(range(3 * 16, 4 * 16)), "the adapter's concat mapping broke"
    assert plain != ours, ("torch-pruning now maps a concatenation before a flatten itself: "
                           "drop _Graph/_map_flattened_concats from the adapter")


def test_plain_torch_pruning_still_cuts_grouped_inputs_contiguously():
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(8.0).reshape(4, 2, 1, 1))
    plain = tp.prune_conv_in_channels(nn.Conv2d(4, 4, 1, groups=2, bias=False), [1, 3])
    model = nn.Sequential(nn.Conv2d(1, 4, 1), conv)
    graph = dependency_graph(model, torch.randn(1, 1, 2, 2))
    apply(graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [1, 3]))
    # Input 1 is the second of group 0, input 3 the second of group 1: each neuron keeps its
    # group's first input weight.
    assert conv.weight.flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
    assert plain.in_channels == 2  # torch-pruning accepts it; its indices are what differ


def test_a_residual_add_couples_its_layers_into_one_group():
    model = models.create("resnet20", in_channels=3, input_size=16)
    groups = {g.name: g for g in neuron_groups(model, (3, 16, 16))}
    coupled = [g for g in groups.values() if len(g.layers) > 1]
    assert coupled, "torch-pruning no longer couples the layers of a residual add"
    assert all(len({s.param.shape[s.dim] for s in g.slices if s.part == "weight"}) == 1
               for g in coupled)


@pytest.mark.parametrize("name", ["lenet5", "vgg_small"])
def test_group_norm_pruner_still_takes_the_arguments_the_baseline_passes(name):
    from compactcnn.sparsity.tp_adapter import group_norm_pruner, pruner_importance

    model = models.create(name)
    pruner = group_norm_pruner(model, torch.randn(1, 1, 28, 28), 1e-4)
    importance = pruner_importance(pruner, model)
    sizes = {g.name: g.size for g in neuron_groups(model, (1, 28, 28))}
    assert {k: len(v) for k, v in importance.items()} == sizes


def test_a_graph_torch_pruning_cannot_trace_is_one_clear_error(monkeypatch, capsys):
    """Where torch-pruning's tracer gives up with an error the adapter does not expect, that
    reaches users as one line, not a crash."""
    from compactcnn.cli import main
    from compactcnn.errors import CompactCNNError
    from compactcnn.surgery import compact

    def gives_up(graph):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(tp.dependency.index_mapping, "update_index_mapping", gives_up)
    model = models.create("lenet5")
    for call in (lambda: neuron_groups(model, (1, 28, 28)), lambda: compact(model, (1, 28, 28))):
        with pytest.raises(CompactCNNError, match=r"^torch-pruning [\d.]+ cannot trace this "
                                                  r"model's channel dependencies \(TypeError"):
            call()
    assert main(["groups", "lenet5"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "cannot trace" in err and "Traceback" not in err


class _TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.head(y.mean(dim=(2, 3)))


def test_a_concatenation_whose_widths_torch_pruning_cannot_read_is_a_dead_end(monkeypatch):
    """In swin_s and swin_b torch-pruning's shape inference gives up past its recursion depth,
    and the patch-merging concatenation then adds None to an int (TypeError). The adapter
    makes such a concatenation a dead end: its inputs' neurons stay, every other layer is
    compacted as usual, and the outputs are unchanged."""
    from torch_pruning.dependency import shape_infer

    from compactcnn.surgery import compact
    from tests.compaction_helpers import max_diff

    original = shape_infer.infer_channels_between
    monkeypatch.setattr(shape_infer, "infer_channels_between", lambda graph, n, target: None
                        if target.type == tp.ops.OPTYPE.CONCAT else original(graph, n, target))
    torch.manual_seed(0)
    model = _TwoBranches().eval()
    with torch.no_grad():
        for conv in (model.a, model.c):
            conv.weight[:2] = 0.0
            conv.bias[:2] = 0.0
    small, report = compact(model, (3, 8, 8))
    assert (small.a.out_channels, small.c.out_channels) == (4, 4)
    assert max_diff(model, small, (3, 8, 8)) <= 1e-6
