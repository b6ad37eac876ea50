"""BatchNorm over the global batch under torchrun, on CPU (gloo) as on CUDA (NCCL).

A BatchNorm layer in training mode normalises with its batch's statistics. Under torchrun each
process sees only its share of the global batch, so plain BatchNorm would normalise with
per-share statistics and N processes would not take the steps one process takes. torch's
``nn.SyncBatchNorm`` fixes that on GPUs only: in torch 2.13 its training forward raises
"SyncBatchNorm expected input tensor to be on GPU" for CPU tensors, and this project trains on
gloo/CPU. :class:`GlobalBatchNorm` is the smallest replacement: two all-reduces of per-channel
sums (with the count, then of squared deviations) give the global batch's mean and biased
variance, exactly what BatchNorm computes over the whole batch, and the all-reduce's backward
sends every process's loss gradient back to every share. It works on any device and backend,
so CPU and CUDA runs share one implementation, the one the CPU tests check.

:func:`synced` does not convert the model in place: it returns a view whose BatchNorm layers
are wrapped and which shares every parameter, buffer and other layer with the model. The model
itself keeps its plain ``nn.BatchNorm`` layers, so checkpoints, model files, compaction and the
methods' hooks never meet the wrapper, and nothing has to be converted back after training.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from compactcnn.run.sync_dropout import GlobalDropout


class _AllReduceSum(torch.autograd.Function):
    """A differentiable sum over processes.

    Every process's loss depends on every process's sums, so the gradient reaching this
    process's sums is the sum of all the processes' gradients: the backward all-reduces too.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.Module):
    """Wraps a BatchNorm layer so that, in training, it normalises over the global batch.

    Its parameters and running statistics are the wrapped layer's own; the running statistics
    are updated as BatchNorm updates them (unbiased variance, momentum or cumulative average),
    from the global batch. In eval mode it is the wrapped layer. Shares may be uneven or empty:
    the statistics are weighted by each share's size.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not bn.training:
            return bn(x)
        bn._check_input_dim(x)
        dims = [0, *range(2, x.dim())]  # every dimension but the channels
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # The count rides along with the sums: one all-reduce instead of two.
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() // x.shape[1])])
        total = _AllReduceSum.apply(local)
        count = int(total[-1].item())
        if count < 2:  # as BatchNorm itself refuses
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"{count} over all processes")
        mean = total[:-1] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / count
        out = centred * torch.rsqrt(var + bn.eps).view(shape)
        if bn.weight is not None:
            out = out * bn.weight.view(shape)
        if bn.bias is not None:
            out = out + bn.bias.view(shape)
        if bn.track_running_stats and bn.num_batches_tracked is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = (1.0 / bn.num_batches_tracked.item() if bn.momentum is None
                          else bn.momentum)
                bn.running_mean.lerp_(mean, factor)
                bn.running_var.lerp_(var * (count / (count - 1)), factor)
        return out


def synced(model: nn.Module) -> nn.Module:
    """``model`` as the training steps see it: every BatchNorm normalises over the global batch
    and every ``nn.Dropout`` draws the global batch's mask (:mod:`.sync_dropout`).

    Modules with no BatchNorm below them are the model's own; those on the way to one are
    shallow copies with their own list of children (the same parameters, buffers and hooks),
    so training the view trains ``model`` and ``model`` never changes type.
    """
    if isinstance(model, _BatchNorm):
        return GlobalBatchNorm(model)
    if type(model) is nn.Dropout:  # Dropout2d and the like draw other shapes: per process
        return GlobalDropout(model)
    children = {name: None if child is None else synced(child)
                for name, child in model._modules.items()}
    if all(children[name] is child for name, child in model._modules.items()):
        return model
    view = copy.copy(model)
    view._modules = children
    return view
