"""Model factories the CLI tests reach through an import path (tests.fixtures_models:NAME)."""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """For a 1 x 12 x 12 input: conv 3x3 (4) -> BN -> ReLU -> pool -> 4 x 5 x 5 -> linear."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 5 * 5, num_classes),
    )


def broken(num_classes: int = 10) -> nn.Module:
    """A factory that fails, as user code may."""
    raise RuntimeError(f"cannot build a model for {num_classes} classes")
