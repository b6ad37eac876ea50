"""The base optimizer and the learning-rate schedule of a run (and of its fine-tuning)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset

from compactcnn.run.config import TrainConfig


def schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0
             ) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay over ``steps``, after a linear warm-up from lr/10 over ``warmup`` steps.

    The warm-up keeps a network without normalisation (Caffe's LeNet) from diverging in
    its first steps at a learning rate it trains well with afterwards.
    """
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps - warmup, 1))
    if warmup <= 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def base_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay)


def batches_per_epoch(dataset: Dataset, batch_size: int) -> int:
    return math.ceil(len(dataset) / batch_size)
