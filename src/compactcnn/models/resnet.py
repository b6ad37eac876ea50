"""torchvision's ResNet-18, and the residual block the CIFAR ResNets reuse."""

from __future__ import annotations

import torch
from torch import nn

from compactcnn.models.registry import register


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs plus a shortcut; a 1x1 conv-BN shortcut when the shape changes.

    Each ReLU is its own module (torchvision shares one) so activation hooks fire once per site.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


def make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """Only the first block changes resolution or width; the rest keep it."""
    first = BasicBlock(in_planes, planes, stride)
    return nn.Sequential(first, *(BasicBlock(planes, planes, 1) for _ in range(blocks - 1)))


def init_resnet(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: He-normal (fan-out) convs, identity BatchNorm."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ResNet18(nn.Module):
    """Same module names as torchvision's resnet18, so its state dicts load unchanged."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_stage(64, 64, 2, 1)
        self.layer2 = make_stage(64, 128, 2, 2)
        self.layer3 = make_stage(128, 256, 2, 2)
        self.layer4 = make_stage(256, 512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# The layers accept any size; 32 is the chosen floor, the side at which the five halvings leave
# layer4 exactly 1x1.
@register("resnet18", {"num_classes": 1000, "in_channels": 3, "input_size": 224}, min_input_size=32)
def resnet18(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """ResNet-18 for ImageNet (11,689,512 parameters for 1000 classes)."""
    return ResNet18(num_classes, in_channels)
