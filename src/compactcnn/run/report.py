"""The run report: report.json for machines, report.md and PNG plots for people.

Every figure is measured on the objects the run produced: parameters and memory from the
neuron tables, FLOPs from torch's flop counter, accuracy on the test set with the compact
model, and latency with the clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compactcnn.errors import CompactCNNError
from compactcnn.files.atomic import atomic_write
from compactcnn.run.plots import plots
from compactcnn.run.rundir import REPORT, REPORT_MD, run_file


def write(report: dict[str, Any], run_dir: Path) -> None:
    atomic_write(run_dir / REPORT, json.dumps(report, indent=2))
    atomic_write(run_dir / REPORT_MD, markdown(report))
    plots(report, run_dir)


def read(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's report (from its folder, or the report.json itself)."""
    path = Path(run_dir)
    path = run_file(path, REPORT) if path.is_dir() else path
    if not path.is_file():
        raise CompactCNNError(f"no report at {path}: is it a finished run folder?")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CompactCNNError(f"{path} is not a valid report") from None
    missing = [k for k in _REQUIRED if not isinstance(report, dict) or k not in report]
    if missing:
        raise CompactCNNError(f"{path} is JSON but not a compactcnn report (no "
                              f"{', '.join(missing)})")
    return report


# What summary() and markdown() read: a file without them is not a report.
_REQUIRED = ("model", "data", "reg", "lam", "epochs", "dense", "compact", "accuracy", "layers",
             "history", "train_seconds", "max_abs_output_diff")


def _pct(a: float, b: float) -> str:
    return f"{a / b:.1%}" if b else "-"


def summary(r: dict[str, Any]) -> str:
    """The headline figures as aligned text (what ``compactcnn report`` prints)."""
    d, c = r["dense"], r["compact"]
    lines = [f"{r['model']} on {r['data']}, reg {r['reg']} lam {r['lam']:g}, "
             f"{r['epochs']} epochs (+{r.get('finetune_epochs', 0)} fine-tune), "
             f"trained in {r['train_seconds']:.0f} s",
             f"{'':22}{'dense':>16}{'compact':>16}{'ratio':>9}"]
    for label, key in (("parameters", "params"), ("memory footprint (B)", "memory_bytes"),
                       ("FLOPs", "flops"), ("latency batch 1 (ms)", "latency_ms")):
        if key in d:
            fmt = "{:>16,.3f}" if key == "latency_ms" else "{:>16,}"
            lines.append(f"{label:22}" + fmt.format(d[key]) + fmt.format(c[key])
                         + f"{_pct(c[key], d[key]):>9}")
    lines.append(f"test accuracy: {r['accuracy']:.4f} (compact model"
                 + (f"; {r['accuracy_before_finetune']:.4f} before fine-tuning)"
                    if r.get("finetune_epochs") else ")"))
    lines.append(f"max |output(compact) - output(sparse)| = {r['max_abs_output_diff']:.3g}")
    lines.append("")
    lines.append(f"{'layer':14}{'neurons before':>16}{'after':>8}")
    for layer in r["layers"]:
        lines.append(f"{layer['name']:14}{layer['neurons_before']:>16}"
                     f"{layer['neurons_after']:>8}")
    for reason, n in r.get("kept", {}).items():
        lines.append(f"kept {n} dead neuron(s): {reason}")
    lines.extend(_selection(r))
    return "\n".join(lines)


def _selection(r: dict[str, Any]) -> list[str]:
    """Where a budgeted run's removed neurons came from, and a warning when our penalty did
    less than the selection's trim (its sparse phase was too short for the lam controller)."""
    s = r.get("selection")
    if not s:
        return []
    lines = [f"removed: {s['dead_in_training']} neuron(s) dead when the sparse phase ended, "
             f"{s['chosen_at_selection']} chosen at the selection point"
             + (f", {s['brought_back']} dead one(s) brought back" if s["brought_back"] else "")]
    if r.get("reg", "none") == "none":  # no penalty trained: every removal is the selection's
        return lines
    if s["chosen_at_selection"] > s["dead_in_training"]:
        lines.append(f"note: the penalty removed fewer neurons than the selection's trim by "
                     f"norm: {s['sparse_steps']} sparse steps were too few for the lam "
                     "controller; more --epochs or a larger --prune-fraction give it room")
    if s["brought_back"]:
        lines.append(f"note: the lam controller overshot the budget; {s['brought_back']} dead "
                     "neuron(s) came back, freshly initialised, to fill it")
    return lines


_ABSENT = {"input": "-", "output": "-", "params": "-"}


def _count(n: int | str) -> str:
    return f"{n:,}" if isinstance(n, int) else n


def markdown(r: dict[str, Any]) -> str:
    table = ["| layer | width | height | input | output before | output after "
             "| params before | params after |", "|---|---|---|---|---|---|---|---|"]
    before = {row["name"]: row for row in r["dense"]["table"]["layers"]}
    after = {row["name"]: row for row in r["compact"]["table"]["layers"]}
    # A network built at the budget (methods/by_design.py) may have layers the dense one has
    # not, and lack some of its: "-" on the side without the layer.
    for name in [*before, *(n for n in after if n not in before)]:
        b, a = before.get(name, _ABSENT), after.get(name, _ABSENT)
        shape = b if name in before else a
        table.append(f"| {name} | {shape['width']} | {shape['height']} | "
                     f"{b['input']} → {a['input']} | {b['output']} | {a['output']} | "
                     f"{_count(b['params'])} | {_count(a['params'])} |")
    return "\n".join([f"# compactcnn run: {r['model']} on {r['data']}", "", "```",
                      summary(r), "```", "", "## Neuron table, before and after", "",
                      *table, "", "![neurons](neurons.png)", "![live](live.png)",
                      "![curves](curves.png)", ""])
