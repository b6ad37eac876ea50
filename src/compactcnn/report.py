"""The run report: report.json for machines, report.md and PNG plots for people.

Every figure is measured on the objects the run produced: parameters and memory from the
neuron tables, FLOPs from torch's flop counter, accuracy on the test set with the compact
model, and latency with the clock.
"""

from __future__ import annotations

import io as _bytes
import json
from pathlib import Path
from typing import Any

from compactcnn.errors import CompactCNNError
from compactcnn.io import atomic_write

REPORT = "report.json"


def write(report: dict[str, Any], run_dir: Path) -> None:
    atomic_write(run_dir / REPORT, json.dumps(report, indent=2))
    atomic_write(run_dir / "report.md", markdown(report))
    plots(report, run_dir)


def read(run_dir: str | Path) -> dict[str, Any]:
    from compactcnn.pipeline import run_file

    path = Path(run_dir)
    path = run_file(path, REPORT) if path.is_dir() else path
    if not path.is_file():
        raise CompactCNNError(f"no report at {path}: is it a finished run folder?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CompactCNNError(f"{path} is not a valid report") from None


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
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    table = ["| layer | width | height | input | output before | output after "
             "| params before | params after |", "|---|---|---|---|---|---|---|---|"]
    after = {row["name"]: row for row in r["compact"]["table"]["layers"]}
    for row in r["dense"]["table"]["layers"]:
        a = after[row["name"]]
        table.append(f"| {row['name']} | {row['width']} | {row['height']} | "
                     f"{row['input']} → {a['input']} | {row['output']} | {a['output']} | "
                     f"{row['params']:,} | {a['params']:,} |")
    return "\n".join([f"# compactcnn run: {r['model']} on {r['data']}", "", "```",
                      summary(r), "```", "", "## Neuron table, before and after", "",
                      *table, "", "![neurons](neurons.png)", "![live](live.png)",
                      "![curves](curves.png)", ""])


def plots(r: dict[str, Any], run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        buffer = _bytes.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write(run_dir / name, buffer.getvalue())

    names = [layer["name"] for layer in r["layers"]]
    fig, ax = plt.subplots(figsize=(max(5, len(names) * 0.5), 3.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [x["neurons_before"] for x in r["layers"]], 0.4,
           label="before")
    ax.bar([x + 0.2 for x in xs], [x["neurons_after"] for x in r["layers"]], 0.4, label="after")
    ax.set_xticks(list(xs), names, rotation=45, ha="right")
    ax.set_ylabel("neurons")
    ax.set_title("Neurons per layer")
    ax.legend()
    save(fig, "neurons.png")

    history = r["history"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    groups = sorted({g for h in history for g in h.get("live", {})})
    for g in groups:
        ax.plot([h["epoch"] for h in history], [h["live"].get(g) for h in history], marker=".",
                label=g)
    ax.set_xlabel("epoch")
    ax.set_ylabel("live neurons")
    ax.set_title("Live neurons per layer during training")
    if groups:
        ax.legend(fontsize="small", ncol=2)
    save(fig, "live.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["loss"] for h in history], label="train")
    left.plot(epochs, [h["val_loss"] for h in history], label="validation")
    left.set_title("loss")
    right.plot(epochs, [h["accuracy"] for h in history], label="train")
    right.plot(epochs, [h["val_accuracy"] for h in history], label="validation")
    right.set_title("accuracy")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.legend()
    save(fig, "curves.png")
