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


def tiny_mlp_bn(num_classes: int = 10) -> nn.Module:
    """For a 1 x 4 x 4 input: a BatchNorm1d that a batch of one breaks in training mode."""
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, num_classes))


class _FailingForward(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        raise ValueError("this model refuses every input")


def fails_forward(num_classes: int = 10) -> nn.Module:
    """Builds, then fails in forward with an error that is not torch's, as user code may."""
    return _FailingForward(num_classes)


def train_steps(model: nn.Module, x, y, steps: int, lr: float) -> list[float]:
    """Adam on batches of 50 cycled over ``x``; the losses, to show that they fall."""
    import torch.nn.functional as F
    from torch.optim import Adam

    optimizer = Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        batch = slice(step % (len(x) // 50) * 50, step % (len(x) // 50) * 50 + 50)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
