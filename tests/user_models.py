"""Models as a user writes them, outside the zoo: what ``--model tests.user_models:NAME`` names.

Each is sized for the synthetic data (1 x 28 x 28, 10 classes), except where a test needs one
that does not fit.
"""

from __future__ import annotations

import torch
from torch import nn

NOT_CALLABLE = 3


class SmallCNN(nn.Module):
    """conv 3x3 (6) -> BN -> ReLU -> pool -> conv 3x3 (8) -> ReLU -> pool -> fc 16 -> fc K.

    A class with its own attributes and forward, as users write models, rather than a
    Sequential: loading must rebuild it by calling the class again.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),   # 6 x 13 x 13
            nn.Conv2d(6, 8, 3), nn.ReLU(), nn.MaxPool2d(2))                      # 8 x 5 x 5
        self.hidden = nn.Linear(8 * 5 * 5, 16)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(self.hidden(self.features(x).flatten(1)).relu())


def small_cnn(num_classes: int = 10) -> nn.Module:
    """A factory function that takes num_classes, like torchvision's."""
    return SmallCNN(num_classes)


class DropoutCNN(SmallCNN):
    """SmallCNN with dropout on its hidden features, as classifier heads have it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.classifier(self.dropout(self.hidden(self.features(x).flatten(1)).relu()))


def dropout_cnn(num_classes: int = 10) -> nn.Module:
    return DropoutCNN(num_classes)


def half_dead(num_classes: int = 10) -> nn.Module:
    """The last 8 of its 16 hidden neurons dead (weight rows and bias exactly zero), as a
    sparse run leaves them: compaction removes them."""
    model = SmallCNN(num_classes)
    with torch.no_grad():
        model.hidden.weight[8:] = 0
        model.hidden.bias[8:] = 0
    return model


def ten_classes() -> nn.Module:
    """A factory without num_classes: its outputs are what they are, checked against the data."""
    return SmallCNN(10)


def seven_classes() -> nn.Module:
    """Without num_classes, and wrong for data of 10 classes."""
    return SmallCNN(7)


def broken(num_classes: int = 10) -> nn.Module:
    """Fails as user code may."""
    raise RuntimeError("this factory is broken")


def not_a_module(num_classes: int = 10) -> dict:
    return {"num_classes": num_classes}


def for_rgb(num_classes: int = 10) -> nn.Module:
    """Builds, but its forward fails on one-channel images."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        return logits, logits


def two_outputs() -> nn.Module:
    """Returns a tuple, as models with auxiliary heads do: training needs one tensor."""
    return _Pair()


def no_parameters(num_classes: int = 10) -> nn.Module:
    """The right output shape, and nothing to train."""
    return nn.Sequential(nn.Flatten(), nn.AdaptiveAvgPool1d(num_classes))
