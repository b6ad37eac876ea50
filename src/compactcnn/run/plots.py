"""The run's PNG plots: neurons per layer, live neurons over the run, learning curves."""

from __future__ import annotations

import io as _bytes
from pathlib import Path
from typing import Any

from compactcnn.files.atomic import atomic_write
from compactcnn.run.rundir import PLOTS

NEURONS_PNG, LIVE_PNG, CURVES_PNG = PLOTS


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
    save(fig, NEURONS_PNG)

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
    save(fig, LIVE_PNG)

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
    save(fig, CURVES_PNG)
