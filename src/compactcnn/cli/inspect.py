"""``table`` and ``groups``: look at a model without changing it."""

from __future__ import annotations

import argparse
import json

from compactcnn.cli.common import add_model_arguments, model_from


def _table(args: argparse.Namespace) -> int:
    import torch

    from compactcnn.accounting import cascade, format_table, neuron_table
    from compactcnn.accounting.cascade import parse_removals

    removals = parse_removals(args.remove)
    # The table needs shapes only: on the meta device an input of any size costs no memory,
    # and the example is made there too rather than drawn on the CPU and moved.
    model, shape, name = model_from(args, args.model, device="meta")
    table = neuron_table(model, torch.zeros((1, *shape), device="meta"), name)
    if removals:
        table = cascade(model, table, removals)
    if args.json:
        print(json.dumps(table.as_dict(args.dtype, args.batch), indent=2))
    else:
        print(format_table(table, args.dtype, args.batch))
    return 0


def _groups(args: argparse.Namespace) -> int:
    from compactcnn.sparsity import describe, neuron_groups

    model, shape, _ = model_from(args, args.model)  # in eval mode: a batch of one suffices
    groups = neuron_groups(model, shape, full=args.full)
    if args.json:
        print(json.dumps([{"name": g.name, "layers": list(g.layers), "neurons": g.size,
                           "slices": [{"param": s.name, "dim": s.dim, "role": s.role,
                                       "per_neuron": s.per_neuron} for s in g.slices]}
                          for g in groups], indent=2))
    else:
        print(describe(groups))
    return 0


def add_commands(sub) -> None:
    from compactcnn.accounting.table import DTYPE_BYTES

    t = sub.add_parser("table", help="the per-layer neuron table (the paper's Table 1)")
    add_model_arguments(t)
    t.add_argument("--remove", action="append", default=[], metavar="LAYER=N",
                   help="show the table after removing N neurons of LAYER (repeatable)")
    t.add_argument("--dtype", default="float32", choices=list(DTYPE_BYTES))
    t.add_argument("--batch", type=int, default=1, help="batch size for the feature maps")
    t.add_argument("--json", action="store_true")
    t.set_defaults(run=_table)

    g = sub.add_parser("groups", help="which parameter slices make up each neuron")
    add_model_arguments(g)
    g.add_argument("--full", action="store_true",
                   help="also the next layer's input slices of each neuron")
    g.add_argument("--json", action="store_true")
    g.set_defaults(run=_groups)
