"""Multi-process and multi-node training on torch.distributed.

Launch with torchrun (``torchrun --nproc-per-node 2 -m compactcnn.cli train ...``, or with
``--nnodes``/``--rdzv-endpoint`` across machines); its environment variables switch this on.
Every rank computes the same proximal step on the same all-reduced gradients, so the
neurons that die are the same on every rank without any extra communication. Rank 0 writes
checkpoints and the report; the run folder must be on a filesystem that every node sees
for ``--resume``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from compactcnn.errors import CompactCNNError


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


def rank_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int,
                world: World) -> DataLoader:
    """This rank's share of the epoch: batch k of every rank together is the global batch k.

    The global batch size stays ``batch_size``, so a run on N processes takes the same
    steps on the same samples as the same run on one process.
    """
    if batch_size % world.size:
        raise CompactCNNError(f"--batch-size {batch_size} must be a multiple of the "
                              f"{world.size} processes")
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank,
                                 shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size // world.size, sampler=sampler)
