"""Caffe's AlexNet (the BVLC reference model), the large network in the paper's ImageNet results."""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.models.registry import register


def _pool_side(side: int) -> int:
    return (side - 3) // 2 + 1


class AlexNet(nn.Module):
    """The two-tower original: conv2, conv4 and conv5 use groups=2, and LRN follows conv1/conv2.

    This differs from torchvision's single-tower variant on purpose: Caffe's grouped layout
    (60,965,224 parameters at 227x227) is the baseline ImageNet compression results are quoted
    against. Pools round down, which agrees with Caffe's rounding up at 227.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        side = _pool_side(_pool_side(_pool_side((input_size - 11) // 4 + 1)))
        self.conv1 = nn.Conv2d(in_channels, 96, 11, stride=4)
        self.relu1 = nn.ReLU()
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.relu2 = nn.ReLU()
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.relu4 = nn.ReLU()
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.relu5 = nn.ReLU()
        self.pool5 = nn.MaxPool2d(3, 2)
        self.fc6 = nn.Linear(256 * side * side, 4096)
        self.relu6 = nn.ReLU()
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.relu7 = nn.ReLU()
        self.drop7 = nn.Dropout(0.5)
        self.fc8 = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.norm1(self.relu1(self.conv1(x))))
        x = self.pool2(self.norm2(self.relu2(self.conv2(x))))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.conv4(x))
        x = self.pool5(self.relu5(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        return self.fc8(x)


# 67 is the smallest side for which the third max-pool still has a 3x3 window to read.
@register("alexnet", {"num_classes": 1000, "in_channels": 3, "input_size": 227}, min_input_size=67)
def alexnet(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Caffe AlexNet with grouped convolutions (60,965,224 parameters at 227x227)."""
    return AlexNet(num_classes, in_channels, input_size)
