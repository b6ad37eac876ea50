"""A fully connected baseline, so neuron sparsity can be compared with and without convolutions."""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.models.registry import register


class MLP(nn.Module):
    """Each hidden layer has its own named ReLU so activation hooks see every neuron once."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * input_size * input_size, 500)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(500, 300)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(300, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


@register("mlp", {"num_classes": 10, "in_channels": 1, "input_size": 28})
def mlp(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """784-500-300-10 perceptron (545,810 parameters on 28x28 MNIST)."""
    return MLP(num_classes, in_channels, input_size)
