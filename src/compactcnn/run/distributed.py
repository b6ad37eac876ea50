"""Multi-process and multi-node training on torch.distributed.

Launch with torchrun (``torchrun --nproc-per-node 2 -m compactcnn.cli train ...``, or with
``--nnodes``/``--rdzv-endpoint`` across machines); its environment variables switch this on.

N processes take the steps one process takes (up to the order of float sums): each global
batch is the batch ``compactcnn train`` would draw for that (seed, epoch), augmentation
included; each process takes a share of it; each share's loss is weighted so that DDP's
average of the processes' gradients is the gradient of the mean loss over the global batch,
however unevenly the batch was shared; and BatchNorm normalises over the global batch
(``sync_norm.py``). Every rank then computes the same proximal step on the same all-reduced
gradients, so the neurons that die are the same on every rank without any extra
communication. Rank 0 writes checkpoints and the report; the run folder must be on a
filesystem that every node sees for ``--resume``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compactcnn.data.loaders import batch_loader, epoch_batches
from compactcnn.run.device import model_device
from compactcnn.run.sync_norm import synced

K = TypeVar("K")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group that torchrun describes; pick this rank's GPU when on CUDA."""
    if not launched():
        return SINGLE, device
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def shutdown(world: World) -> None:
    if world.active:
        dist.barrier()
        dist.destroy_process_group()


def share(batches: Sequence[Sequence[K]], rank: int, size: int) -> list[list[K]]:
    """Process ``rank``'s share of every batch: its every ``size``-th sample from ``rank`` on.

    Every sample of every batch lands in exactly one share, with no padding and no repeats;
    shares of one batch differ in size by at most one, and a batch smaller than ``size``
    leaves some shares empty. Every process gets one share of every batch, so all of them
    take the same number of steps, as DDP's all-reduces need.
    """
    return [list(batch[rank::size]) for batch in batches]


def rank_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, world: World,
                augment: bool = False, workers: int = 0) -> DataLoader:
    """This rank's share of the epoch: batch k of every rank together is the global batch k.

    The global batches are :func:`~compactcnn.data.loaders.epoch_loader`'s for (seed, epoch),
    so a run on N processes trains on the samples, in the order and with the augmentation, of
    the same run on one process. ``batch_size`` need not divide by the number of processes.
    """
    batches = epoch_batches(len(dataset), batch_size, seed, epoch, augment)  # type: ignore[arg-type]
    return batch_loader(dataset, share(batches, world.rank, world.size), augment, workers)


def share_loss(world: World, smoothing: float = 0.0
               ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss a rank back-propagates for its share of a global batch.

    DDP averages the ranks' gradients, which is the gradient of the global batch's mean loss
    only if every share is the same size. So each rank back-propagates its share's summed
    loss times N / (global batch size): the average over the N ranks is then the global
    mean's gradient for any shares, an empty one included (its loss is 0 but still takes
    part in the all-reduces). The value returned is the share's own mean loss (0 when empty),
    for the progress figures. One process takes ``F.cross_entropy`` itself, so that a
    one-process torchrun run is exactly the plain run. Both keep ``smoothing``, the run's
    label smoothing: it is a per-sample term, so the summed share carries it unchanged.
    """
    if world.size == 1:
        return partial(F.cross_entropy, label_smoothing=smoothing)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(out, y, reduction="sum", label_smoothing=smoothing)
        global_size = torch.tensor(len(y), device=out.device)
        dist.all_reduce(global_size)
        weighted = total * (world.size / global_size.item())
        mean = total.detach() / max(len(y), 1)
        return weighted + (mean - weighted.detach())  # the value of one, the gradient of the other

    return loss


def global_means(loss: float, accuracy: float, seen: int, device: torch.device
                 ) -> tuple[float, float]:
    """An epoch's training loss and accuracy over every rank's samples, from each rank's means
    over its own ``seen`` samples, so that the figures a run reports are the global batches',
    as one process would report them."""
    totals = torch.tensor([loss * seen, accuracy * seen, float(seen)], dtype=torch.float64,
                          device=device)
    dist.all_reduce(totals)
    loss_sum, correct, total = totals.tolist()
    return loss_sum / max(total, 1), correct / max(total, 1)


def wrap(model: nn.Module, world: World) -> nn.Module | None:
    """What the training steps call under torchrun: DDP over the model (None outside torchrun).

    With more than one process DDP wraps :func:`~compactcnn.run.sync_norm.synced`'s view of
    the model, so BatchNorm normalises over the global batch while ``model`` keeps its plain
    BatchNorm layers for checkpoints and the saved model. One process has nothing to share.
    """
    if not world.active:
        return None
    device = model_device(model)
    return nn.parallel.DistributedDataParallel(
        synced(model) if world.size > 1 else model,
        device_ids=[device] if device.type == "cuda" else None)
