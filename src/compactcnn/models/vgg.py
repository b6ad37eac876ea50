"""VGG networks: torchvision's ImageNet VGG-11/16 and a small BatchNorm VGG for MNIST-sized data.

All share one conv-stack builder, so `features` and `classifier` index layers the same way as
torchvision and pretrained state dicts load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.models.registry import register

_POOL = "M"
_VGG11 = [64, _POOL, 128, _POOL, 256, 256, _POOL, 512, 512, _POOL, 512, 512, _POOL]
_VGG16 = [64, 64, _POOL, 128, 128, _POOL, *[256] * 3, _POOL, *[512] * 3, _POOL, *[512] * 3, _POOL]
_VGG_SMALL = [32, 32, _POOL, 64, 64, _POOL, 128, 128, _POOL]
_IMAGENET = {"num_classes": 1000, "in_channels": 3, "input_size": 224}
_MNIST = {"num_classes": 10, "in_channels": 1, "input_size": 28}


def _conv_stack(config: list[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for item in config:
        if not isinstance(item, int):
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(in_channels, item, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU())
        in_channels = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG without BatchNorm, including its initialisation.

    The adaptive pool makes the classifier 25088 wide for any input of at least 32, so small test
    inputs still exercise the full ImageNet-sized classifier.
    """

    def __init__(self, config: list[int | str], num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = _conv_stack(config, in_channels, batch_norm=False)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class VGGSmall(nn.Module):
    """Three conv-BN-ReLU pairs with pools, then a 256-unit hidden layer: VGG shape at MNIST scale.

    The convolutions keep their biases ahead of BatchNorm: redundant, but part of the reference
    count of 585,066 parameters at 28x28.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        side = input_size // 8
        self.features = _conv_stack(_VGG_SMALL, in_channels, batch_norm=True)
        self.classifier = nn.Sequential(
            nn.Linear(128 * side * side, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# Five 2x2 pools need at least 32 pixels; three need at least 8.
@register("vgg11", _IMAGENET, min_input_size=32)
def vgg11(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """VGG-11, configuration A (132,863,336 parameters for 1000 classes)."""
    return VGG(_VGG11, num_classes, in_channels)


@register("vgg16", _IMAGENET, min_input_size=32)
def vgg16(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """VGG-16, configuration D (138,357,544 parameters for 1000 classes)."""
    return VGG(_VGG16, num_classes, in_channels)


@register("vgg_small", _MNIST, min_input_size=8)
def vgg_small(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Small BatchNorm VGG for 28x28 inputs (585,066 parameters)."""
    return VGGSmall(num_classes, in_channels, input_size)
