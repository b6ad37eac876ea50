"""The neuron table as the paper prints it."""

from __future__ import annotations

from compactcnn.accounting.table import NeuronTable


def format_table(table: NeuronTable, dtype: str = "float32", batch: int = 1) -> str:
    """The table as the paper prints it, with totals and the memory footprint."""
    head = ("layer", "kind", "width", "height", "input", "output", "groups", "parameters",
            "feature map")
    body = [(r.name, r.kind, *(str(v) if r.kind != "other" else "" for v in
                               (r.width, r.height, r.input)),
             str(r.output) if r.output else "", str(r.groups) if r.kind != "other" else "",
             f"{r.params:,}", f"{r.feature_map:,}" if r.kind != "other" else "")
            for r in table.layers]
    body.append(("total", "", "", "", "", f"{table.neurons:,}", "", f"{table.total_params:,}",
                 f"{table.total_feature_map:,}"))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [f"{table.model}  input {'x'.join(map(str, table.input))}", fmt.format(*head),
             fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*b) for b in body[:-1]]
    lines += [fmt.format(*("-" * w for w in widths)), fmt.format(*body[-1])]
    mem = table.memory(dtype, batch)
    lines.append(f"memory footprint ({dtype}, batch {batch}): parameters "
                 f"{_mib(mem['params_bytes'])} + feature maps {_mib(mem['feature_maps_bytes'])}"
                 f" = {_mib(mem['total_bytes'])}")
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n:,} B ({n / 2**20:.2f} MiB)"
