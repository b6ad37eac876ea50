"""compare.md and compare.png: the comparison as a table and as accuracy against size."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from compactcnn.files.atomic import atomic_write

# One run moves by about 0.3 points with the seed on Fashion-MNIST: as much as most gaps here.
SEED_CAVEAT = ("One seed: a gap of a few tenths of a point may be the seed's alone. "
               "`--seeds 0 1 2 3 4` runs the comparison on each seed and says which gaps are "
               "real.")


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
    lines += ["", SEED_CAVEAT]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    fig, axes = _figure(f"{result['model']} on {result['data']} at {result['target']}")
    for ax, key in zip(axes, ("params", "flops"), strict=True):
        for r in result["rows"]:
            if "accuracy" in r:
                ax.scatter(r[key], 100 * r["accuracy"], s=80, label=r["method"],
                           marker="*" if r["method"] == "dense" else "o")
    _save(fig, path)


def seeds_markdown(result: dict[str, Any]) -> str:
    """The summary over seeds: each method's accuracy by seed, its mean and spread, and our
    reference method against it, paired by seed, with the verdict its interval allows."""
    ref, seeds = result["reference"], ", ".join(map(str, result["seeds"]))
    conf = f"{result['confidence']:.0%}"
    lines = [f"# {result['model']} on {result['data']}: every method at {result['target']}, "
             f"{result['epochs']} epochs in all, seeds {seeds}", "",
             f"Test accuracy (%). The last columns are {ref or 'ours'} minus the method, seed by "
             f"seed: the mean with its {conf} interval (Student t over the seeds), the seeds "
             f"{ref or 'ours'} led on, and the verdict: ahead or behind only where the interval "
             "excludes zero. Each seed's table, with the command of every row, is "
             "`seed-S/compare.md`.", "", answer(result), "",
             "| method | accuracy per seed | mean | sd | parameters | FLOPs "
             f"| {ref or 'ours'} − method | led on | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in result["methods"]:
        if "mean" not in m:
            lines.append(f"| {m['method']} | not run: {m['skipped']} | | | | | | | |")
            continue
        per_seed = ", ".join(f"{100 * r['accuracy']:.2f}" if "accuracy" in r else "not run"
                             for r in m["runs"])
        sd = "-" if m["sd"] is None else f"{100 * m['sd']:.2f}"
        cells = [m["method"], per_seed, f"{100 * m['mean']:.2f}", sd, f"{m['params']:.1%}",
                 f"{m['flops']:.1%}"]
        vs = m.get("vs_reference")
        if vs is None:
            cells += ["reference" if m["method"] == ref else "", "", ""]
        else:
            half = "" if vs["half_width"] is None else f" ± {100 * vs['half_width']:.2f}"
            cells += [f"{100 * vs['difference']:+.2f}{half}",
                      f"{vs['ahead_on']} of {vs['seeds']}", vs["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def answer(result: dict[str, Any]) -> str:
    """The comparison's answer in one sentence: whom our method beats, ties and trails, as far
    as the seeds can tell."""
    ref, seeds = result["reference"], ", ".join(map(str, result["seeds"]))
    if ref is None:
        return "**The answer**: none, no method of ours ran on every seed."
    if len(result["seeds"]) < 2:
        return "**The answer**: none yet, one seed cannot tell a gap from its spread."
    by: dict[str, list[str]] = {"ahead": [], "level": [], "behind": []}
    for m in result["methods"]:
        if "vs_reference" in m:
            by[m["vs_reference"]["verdict"]].append(m["method"])
    parts = [f"{words} {_listed(by[v])}" for v, words in
             (("ahead", "ahead of"), ("level", "level with"), ("behind", "behind")) if by[v]]
    if not parts:
        return f"**The answer**: none, {ref} ran alone."
    return (f"**The answer**: over seeds {seeds}, {ref} is {'; '.join(parts)} "
            f"({result['confidence']:.0%} intervals).")


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def seeds_plot(result: dict[str, Any], path: Path) -> None:
    """Mean accuracy against mean size, one marker per method, bars one sd either way."""
    seeds = ", ".join(map(str, result["seeds"]))
    fig, axes = _figure(f"{result['model']} on {result['data']} at {result['target']}, "
                        f"seeds {seeds}")
    for ax, key in zip(axes, ("params", "flops"), strict=True):
        for m in result["methods"]:
            if "mean" in m:
                dense = m["runs"][0][f"dense_{key}"]
                ax.errorbar(m[key] * dense, 100 * m["mean"], yerr=100 * (m["sd"] or 0),
                            fmt="*" if m["method"] == "dense" else "o", markersize=8,
                            capsize=3, label=m["method"])
    _save(fig, path)


def _figure(title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, label in zip(axes, ("parameters", "FLOPs"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    return fig, axes


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.axes[1].legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
