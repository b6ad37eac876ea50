"""compare.md and compare.png: the comparison as a table and as accuracy against size."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from compactcnn.files.atomic import atomic_write


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    dense = next((r for r in rows if r["method"] == "dense" and "accuracy" in r), None)
    lines = [f"# {result['model']} on {result['data']}: every method at {result['target']}, "
             f"{result['epochs']} epochs in all, seed {result['seed']}", "",
             "| method | accuracy | Δ vs dense | parameters | FLOPs | memory (B) | latency (ms) "
             "| train s | neurons per layer | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "accuracy" not in r:
            lines.append(f"| {r['method']} | not run: {r['skipped']} | | | | | | | | |")
            continue
        delta = f"{100 * (r['accuracy'] - dense['accuracy']):+.2f} pt" if dense else "-"
        lines.append(
            f"| {r['method']} | {100 * r['accuracy']:.2f}% | {delta} | "
            f"{r['params']:,} ({r['params'] / r['dense_params']:.1%}) | "
            f"{r['flops']:,} ({r['flops'] / r['dense_flops']:.1%}) | {r['memory_bytes']:,} | "
            f"{r['latency_ms']:.3f} | {r['train_seconds']:.0f} | "
            f"{'-'.join(str(v) for v in r['widths'].values())} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "accuracy" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "params", "parameters"), (axes[1], "flops", "FLOPs")):
        for r in rows:
            marker = "*" if r["method"] == "dense" else "o"
            ax.scatter(r[key], 100 * r["accuracy"], marker=marker, s=80, label=r["method"])
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize="small")
    fig.suptitle(f"{result['model']} on {result['data']} at {result['target']}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
