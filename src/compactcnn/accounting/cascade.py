"""What removing neurons saves, by arithmetic alone (independent of the surgery, so each can
check the other).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import Tensor, nn

from compactcnn.accounting.table import NeuronTable
from compactcnn.errors import CompactCNNError
from compactcnn.inputs import as_input
from compactcnn.sparsity.tp_adapter import (
    classifier_of,
    dependency_graph,
    group_of,
    grouped_conv_blocks,
    removes_inputs,
)


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
    x = as_input(model, table.input)
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
        whole = group_of(graph, module, list(range(row.output)))
        idxs = _evenly(grouped_conv_blocks(whole), row.output, n, layer)
        for item in group_of(graph, module, idxs):
            target = names.get(item.dep.target.module)
            if target not in rows:
                continue
            r, k = rows[target], len(item.idxs)
            if not removes_inputs(item.dep):
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
