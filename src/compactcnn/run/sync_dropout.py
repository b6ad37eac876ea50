"""Dropout over the global batch under torchrun: the masks one process would draw.

A plain run draws each dropout mask for its whole batch from the global generator. Under
torchrun each process holds every N-th sample of that batch (``distributed.share``), and a
plain ``nn.Dropout`` would draw a mask for its share only: a different stream of random
numbers, so N processes would take statistically equivalent steps, not the steps of one.
:class:`GlobalDropout` draws the mask of the whole global batch, with the same call the plain
run makes, on every process (their generators start from one seed and stay in step, since
every process draws the same masks), and keeps its own share's rows. On the CPU the result is
the plain run's to the bit; on CUDA the mask is the one the same fused kernel draws.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class GlobalDropout(nn.Module):
    """Wraps an ``nn.Dropout`` so that, in training, this process's rows of the global batch
    get the mask a single process would draw for the whole batch. In eval mode it is the
    wrapped layer."""

    def __init__(self, dropout: nn.Dropout) -> None:
        super().__init__()
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dropout
        if not d.training or d.p == 0:
            return d(x)
        size = torch.tensor([x.shape[0]], device=x.device)
        dist.all_reduce(size)
        whole = x.new_ones((int(size.item()), *x.shape[1:]))
        scale = torch.dropout(whole, d.p, True)  # 0 or 1 / (1 - p), as the plain call draws
        return x * scale[dist.get_rank()::dist.get_world_size()]
