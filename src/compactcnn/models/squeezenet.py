"""torchvision's SqueezeNet 1.0: AlexNet accuracy from 1x1-heavy Fire modules."""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.models.registry import register


class Fire(nn.Module):
    """Squeeze to few channels, then expand with parallel 1x1 and 3x3 branches.

    The branches are joined with `torch.cat` on the channel axis, which torch-pruning traces as a
    concatenation so each output channel maps back to the branch that produced it.
    """

    def __init__(self, in_planes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_planes, squeeze, 1)
        self.squeeze_activation = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class SqueezeNet(nn.Module):
    """Module names, pooling (ceil mode) and initialisation follow torchvision's squeezenet1_0."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, 7, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(96, 16, 64, 64),
            Fire(128, 16, 64, 64),
            Fire(128, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 32, 128, 128),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(512, 64, 256, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), final_conv, nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1))
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is final_conv:
                    nn.init.normal_(module.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# 21 is the smallest side the three ceil-mode pools accept: the last one needs a 2x2 map.
@register(
    "squeezenet1_0", {"num_classes": 1000, "in_channels": 3, "input_size": 224}, min_input_size=21
)
def squeezenet1_0(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """SqueezeNet 1.0 (1,248,424 parameters for 1000 classes)."""
    return SqueezeNet(num_classes, in_channels)
