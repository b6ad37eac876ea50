"""Caffe's LeNet with its fully connected layer factorised, trained from scratch on the
harness's own loop: does low rank in fc3 buy more accuracy at a budget than narrowing?

fc3 holds 93% of LeNet's parameters, so at 10% of them a LeNet that keeps both convolutions
whole fits only if fc3 becomes a thin pair (800 -> r -> f3). The budget runs of
group+low-rank never paid a rank there (the group term empties fc3 first); this script trains
that network directly, as the ``scratch`` control trains a narrowed one (same epochs,
schedule and warm-up as a 14-epoch lenet5 run, ``train_compact`` with a restart), so the two
answers can be set side by side:

    PYTHONPATH=src .venv/bin/python benchmarks/factorised_lenet.py --rank 9 --widths 20,50,500 \\
        --out runs/s13/fact-r9-20-50-500.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from compactcnn.accounting.accuracy import evaluate
from compactcnn.data.splits import load_dataset
from compactcnn.files.atomic import atomic_write
from compactcnn.run.config import TrainConfig
from compactcnn.run.loop import train_compact
from compactcnn.sources import for_training

DENSE_PARAMS = 431_080  # Caffe's LeNet on 28x28 inputs


def factorised_lenet(splits, rank: int, conv1: int, conv2: int, fc3: int) -> nn.Module:
    model = for_training("lenet5", splits, None)
    model.conv1 = nn.Conv2d(model.conv1.in_channels, conv1, 5)
    model.conv2 = nn.Conv2d(conv1, conv2, 5)
    fan_in = conv2 * 4 * 4  # the second pool leaves 4x4 maps of 28x28 inputs
    model.fc3 = nn.Sequential(nn.Linear(fan_in, rank, bias=False), nn.Linear(rank, fc3))
    model.fc4 = nn.Linear(fc3, model.fc4.out_features)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--widths", required=True, help="conv1,conv2,fc3 outputs, e.g. 20,50,500")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    conv1, conv2, fc3 = (int(w) for w in args.widths.split(","))
    cfg = TrainConfig(model="lenet5", epochs=args.epochs, seed=args.seed, reg="none")
    torch.manual_seed(cfg.seed)
    splits = load_dataset(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    model = factorised_lenet(splits, args.rank, conv1, conv2, fc3)
    params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(cfg.seed + 1)  # as the scratch control re-initialises
    history = train_compact(model, splits, cfg, 0, restart=True)
    _, accuracy = evaluate(model.eval(), splits.test)
    result = {"rank": args.rank, "widths": [conv1, conv2, fc3], "seed": args.seed,
              "params": params, "fraction": params / DENSE_PARAMS, "accuracy": accuracy,
              "history": history}
    atomic_write(args.out, json.dumps(result, indent=1))
    print(f"rank {args.rank} widths {args.widths}: {params} parameters "
          f"({params / DENSE_PARAMS:.2%}), accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
