"""LeNet-5 as in Caffe's MNIST example, the smallest convolutional network in the experiments."""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.models.registry import register


class LeNet5(nn.Module):
    """Caffe's LeNet: no ReLU after either convolution, a single one after fc3.

    Kept exactly as Caffe has it so per-layer neuron counts line up with the published LeNet
    results; layers are named attributes so reports can refer to conv1, conv2, fc3, fc4.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc3 = nn.Linear(50 * side * side, 500)
        self.relu3 = nn.ReLU()
        self.fc4 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = torch.flatten(x, 1)
        return self.fc4(self.relu3(self.fc3(x)))


# 16 is the smallest side that leaves the second pool a 1x1 map.
@register("lenet5", {"num_classes": 10, "in_channels": 1, "input_size": 28}, min_input_size=16)
def lenet5(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Caffe LeNet-5 (431,080 parameters on 28x28 MNIST)."""
    return LeNet5(num_classes, in_channels, input_size)
