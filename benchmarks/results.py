"""Full Fashion-MNIST runs: a dense baseline and group lasso at several lam, same epochs.

Each row is one ``compactcnn train`` command (printed in the table), so any row can be
reproduced on its own. Finished runs are reused, so an interrupted sweep can be re-run.

    python benchmarks/results.py --model lenet5 --epochs 12 --lams 0 1e-4 2e-4 4e-4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compactcnn.files.atomic import atomic_write
from compactcnn.run import report
from compactcnn.run.config import TrainConfig
from compactcnn.run.device import pick_device
from compactcnn.run.pipeline import run


def command(cfg: TrainConfig, out: Path, device: str) -> str:
    parts = ["compactcnn train", f"--model {cfg.model}", f"--data {cfg.data}",
             f"--reg {cfg.reg}", f"--lam {cfg.lam:g}", f"--epochs {cfg.epochs}",
             *([f"--lr {cfg.lr:g}"] if cfg.lr is not None else []),
             *([f"--lr-warmup-epochs {cfg.lr_warmup_epochs:g}"] if cfg.lr_warmup_epochs else []),
             f"--finetune-epochs {cfg.finetune_epochs}", f"--seed {cfg.seed}", f"--out {out}"]
    if cfg.data_dir:
        parts.append(f"--data-dir {cfg.data_dir}")
    if cfg.limit:
        parts.append(f"--limit {cfg.limit}")
    if device != "cpu":
        parts.append(f"--device {device}")
    return " ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--lams", type=float, nargs="+", default=[0, 1e-4, 2e-4, 4e-4])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="SGD learning rate (default: the CLI's, 0.05)")
    p.add_argument("--lr-warmup-epochs", type=float, default=0.0)
    p.add_argument("--runs", type=Path, default=Path("runs/results"))
    p.add_argument("--data-dir", help="another copy of the Fashion-MNIST IDX files")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (training only)")
    p.add_argument("--limit", type=int, help="first N training images only (smoke runs)")
    args = p.parse_args()
    device = pick_device(args.device)

    rows = []
    for lam in args.lams:
        reg = "group" if lam > 0 else "none"
        # The dense baseline trains for as many epochs in all as the sparse runs do.
        epochs = args.epochs if lam > 0 else args.epochs + args.finetune_epochs
        cfg = TrainConfig(model=args.model, reg=reg, lam=lam, epochs=epochs,
                          finetune_epochs=args.finetune_epochs if lam > 0 else 0,
                          seed=args.seed, data_dir=args.data_dir, limit=args.limit,
                          lr=args.lr, lr_warmup_epochs=args.lr_warmup_epochs)
        out = args.runs / f"{args.model}-{reg}-{lam:g}"
        done = (out / report.REPORT).exists()
        result = report.read(out) if done else run(cfg, out, device=device)
        rows.append((cfg, out, result))

    dense_acc = next((r["accuracy"] for c, _, r in rows if c.reg == "none"), None)
    lines = ["| run | accuracy | Δ vs dense | parameters | memory (B) | FLOPs | "
             "neurons per layer | seconds | command |", "|---|---|---|---|---|---|---|---|---|"]
    for cfg, out, r in rows:
        d, c = r["dense"], r["compact"]
        delta = f"{100 * (r['accuracy'] - dense_acc):+.2f} pt" if dense_acc is not None else "-"
        neurons = "-".join(str(x["neurons_after"]) for x in r["layers"])
        label = "dense" if cfg.reg == "none" else f"group λ={cfg.lam:g}"
        lines.append(f"| {label} | {100 * r['accuracy']:.2f}% | {delta} | "
                     f"{c['params']:,} ({c['params'] / d['params']:.1%}) | "
                     f"{c['memory_bytes']:,} | {c['flops']:,} ({c['flops'] / d['flops']:.1%}) | "
                     f"{neurons} | {r['train_seconds']:.0f} | `{command(cfg, out, args.device)}` |")
    table = "\n".join(lines)
    print(table)
    args.runs.mkdir(parents=True, exist_ok=True)
    atomic_write(args.runs / f"{args.model}.md", table + "\n")
    atomic_write(args.runs / f"{args.model}.json",
                 json.dumps([{"config": r["model"], "lam": c.lam, "reg": c.reg,
                              "accuracy": r["accuracy"], "dense": r["dense"]["params"],
                              "compact": r["compact"]["params"],
                              "layers": r["layers"]} for c, _, r in rows], indent=2))


if __name__ == "__main__":
    main()
