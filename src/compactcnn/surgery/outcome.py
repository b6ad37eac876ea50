"""What compaction did, group by group, and why each kept dead neuron was kept."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from compactcnn.accounting.table import NeuronTable
from compactcnn.accounting.text import format_table

KEPT_CONSTANT = "emits a constant that cannot be folded (zero-padded or grouped consumer)"


KEPT_VARYING = "not constant where it is consumed"


KEPT_COUPLED = "alive in a coupled layer"


KEPT_GROUPED = "a grouped convolution keeps equal groups"


KEPT_LAST = "last neuron of the layer"


KEPT_OUTPUT = "removing it would change the outputs"


KEPT_TIED = "its channel cannot be cut out (tied to the model's input, say)"


KEPT_ACROSS = "normalised across neurons on its way (LRN, LayerNorm, GroupNorm)"


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
    # Forward passes of the model that compaction ran, tracing and accounting included: its
    # cost in units of one inference.
    forward_passes: int = 0

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
                "kept": dict(self.kept), "max_abs_output_diff": self.max_abs_output_diff,
                "forward_passes": self.forward_passes}

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
