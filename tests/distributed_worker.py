"""The training part of ``compactcnn train`` (build a session, train it) for test_distributed.

Run plainly (one process) or under torchrun: ``python -m tests.distributed_worker OUT MODEL...``.
It skips the CLI and the compaction, report and latency figures that follow training, whose
imports and work would make each launch many seconds slower, and writes rank 0's trained
weights (``OUT/MODEL.safetensors``), its [live, dead] neurons per layer and the last epoch's
training loss and accuracy (``OUT/MODEL.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from compactcnn.run import distributed
from compactcnn.run.config import TrainConfig
from compactcnn.run.loop import train
from compactcnn.run.session import build

# Label smoothing as a run may have it: the shares must keep it in their summed losses.
# 151 images leave 136 for training (15 for validation): batches of 45 split 23/22 between two
# processes, and the last batch, of one image, leaves the second process an empty share.
CONFIG = {"data": "synthetic", "limit": 151, "test_limit": 64, "epochs": 1, "batch_size": 45,
          "lr": 0.01, "label_smoothing": 0.1}
# Penalties that kill most but not all of one layer in these four steps, so that which
# neurons die hangs on small differences between them.
LAM = {"lenet5": 0.12, "vgg_small": 0.1, "tests.user_models:dropout_cnn": 0.3}


def main(out: Path, models: list[str]) -> None:
    # In float64 the order of float sums, the one thing that differs between one process and
    # several, moves the weights by ~1e-15; in float32 vgg_small's BatchNorm backward (which
    # subtracts nearly equal terms) amplifies it to ~1e-3 relative, as much as a change of
    # thread count moves a plain run, which would hide a real difference.
    torch.set_default_dtype(torch.float64)
    world, device = distributed.init(torch.device("cpu"))
    try:
        for name in models:
            session = build(TrainConfig(model=name, lam=LAM[name], **CONFIG), device, world)
            (out / name).mkdir(parents=True, exist_ok=True)
            train(session, out / name)
            if world.is_main:
                save_file(session.model.state_dict(), out / f"{name}.safetensors")
                (out / f"{name}.json").write_text(json.dumps(
                    {"neurons": session.optimizer.neuron_counts(),
                     "train": [session.history[-1]["loss"], session.history[-1]["accuracy"]]}))
    finally:
        distributed.shutdown(world)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
