"""CIFAR ResNets (He et al., 2016, section 4.2): three stages of 16/32/64 channels."""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.models.registry import register
from compactcnn.models.resnet import init_resnet, make_stage


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images, with option-B shortcuts.

    The paper's CIFAR networks use option A (zero-padded identity) shortcuts; here the two
    downsampling shortcuts are 1x1 conv + BN (option B) instead, so every channel added by a
    shortcut comes from a real layer that torch-pruning can trace and prune consistently.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = make_stage(16, 16, blocks_per_stage, 1)
        self.layer2 = make_stage(16, 32, blocks_per_stage, 2)
        self.layer3 = make_stage(32, 64, blocks_per_stage, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_CIFAR = {"num_classes": 10, "in_channels": 3, "input_size": 32}


# The layers accept any size; 8 is the chosen floor, keeping the last stage at 2x2 or more so
# its 3x3 convolutions see more than padding.
@register("resnet20", _CIFAR, min_input_size=8)
def resnet20(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """ResNet-20: three BasicBlocks per stage."""
    return CifarResNet(3, num_classes, in_channels)


@register("resnet56", _CIFAR, min_input_size=8)
def resnet56(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """ResNet-56: nine BasicBlocks per stage."""
    return CifarResNet(9, num_classes, in_channels)
