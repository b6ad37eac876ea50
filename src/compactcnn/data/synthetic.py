"""A fixed synthetic task for smoke tests: like a real dataset, it never changes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compactcnn.data.common import _check_positive
from compactcnn.errors import CompactCNNError

# The synthetic task is fixed (like a real dataset) so that runs with different seeds differ
# only in their split and training randomness, not in the problem they solve.
SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_CLASSES, SYNTHETIC_SEED = 2000, 500, 10, 0


def synthetic(
    n: int,
    shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of one fixed random prototype per class: learnable, but not by memorising.

    Prototypes are smooth (low-resolution noise upsampled) so that convolutions and pooling,
    not just a linear layer on raw pixels, can pick them up. Classes are balanced.
    """
    _check_positive("n", n)
    if len(shape) != 3 or any(isinstance(d, bool) or d < 1 for d in shape):
        raise CompactCNNError(f"shape must be three positive integers (C, H, W), got {shape!r}")
    if num_classes < 2:
        raise CompactCNNError(f"num_classes must be at least 2, got {num_classes}")
    c, h, w = shape
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, c, max(1, h // 4), max(1, w // 4), generator=generator)
    prototypes = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    noise = 0.3 * torch.randn(n, c, h, w, generator=generator)
    return (prototypes[labels] + noise).clamp_(0, 1), labels
