"""A compact device CNN after Zheng et al. (2015): a grayscale CNN plus a fixed colour histogram.

Colour costs a CNN three times the first-layer filters but is cheap to describe without any
learning: a per-patch colour histogram. So the network splits the work: a small CNN sees only
the luminance (shape and texture), a parameter-free extractor summarises colour, and a small
classifier reads both. Compared with an RGB CNN of the same width, colour costs nothing in
convolution weights, only the classifier inputs of the histogram.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from compactcnn.errors import CompactCNNError
from compactcnn.models.registry import register

# ITU-R BT.601 luma weights.
LUMA = (0.299, 0.587, 0.114)


def _per_channel(name: str, values: float | Sequence[float]) -> Tensor:
    values = [float(values)] * 3 if isinstance(values, (int, float)) else list(values)
    if len(values) != 3:
        raise CompactCNNError(f"{name} must give one value per RGB channel, got {values!r}")
    return torch.tensor(values).view(1, 3, 1, 1)


def _require_rgb(channels: int) -> None:
    if channels != 3:
        raise CompactCNNError(f"gray_hist needs RGB input (3 channels), got {channels}")


class ColourHistogram(nn.Module):
    """Per-patch, per-channel colour histograms: fixed features, no parameters.

    The image is cut into ``grid x grid`` patches (row and column boundaries at
    ``floor(i * H / grid)``, so patch sizes differ by at most one pixel), and each patch's values
    in each channel are counted into ``bins`` equal bins of ``[0, 1]`` and divided by the patch's
    pixel count: every patch and channel sums to one, whatever the image size. The output is
    ``[N, 3 * grid * grid * bins]``, ordered (channel, patch row, patch column, bin).

    Bins are defined on pixel values in ``[0, 1]``, but compactcnn feeds models images
    normalised per channel by the training set's mean and std. ``mean`` and ``std`` (per channel
    or one for all, default 0 and 1: no change) undo that first; values outside ``[0, 1]`` then
    count in the end bins. They are buffers, so a saved model keeps the statistics it was built
    with. The counts are not differentiable, and need not be: nothing before them learns.
    """

    def __init__(self, bins: int = 8, grid: int = 3, mean: float | Sequence[float] = 0.0,
                 std: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        if bins < 1 or grid < 1:
            raise CompactCNNError(f"bins and grid must be positive, got {bins} and {grid}")
        self.bins, self.grid = bins, grid
        self.register_buffer("mean", _per_channel("mean", mean))
        self.register_buffer("std", _per_channel("std", std))

    @property
    def out_features(self) -> int:
        return 3 * self.grid * self.grid * self.bins

    def forward(self, x: Tensor) -> Tensor:
        n, channels, h, w = x.shape
        _require_rgb(channels)
        if h < self.grid or w < self.grid:
            raise CompactCNNError(f"a {h}x{w} image cannot be cut into {self.grid}x{self.grid} "
                                  "patches")
        pixels = x * self.std + self.mean
        value_bin = (pixels * self.bins).floor().clamp(0, self.bins - 1).long()
        rows = torch.arange(h, device=x.device) * self.grid // h
        cols = torch.arange(w, device=x.device) * self.grid // w
        patch = rows[:, None] * self.grid + cols[None, :]
        image_channel = torch.arange(n * 3, device=x.device).view(n, 3, 1, 1)
        index = (image_channel * self.grid**2 + patch) * self.bins + value_bin
        counts = torch.bincount(index.flatten(), minlength=n * 3 * self.grid**2 * self.bins)
        counts = counts.view(n, 3, self.grid**2, self.bins).to(x.dtype)
        return (counts / counts.sum(dim=-1, keepdim=True)).flatten(1)


class GrayHist(nn.Module):
    """Luminance CNN (``features``) and colour histogram (``histogram``) into one classifier.

    The CNN is two 3x3 conv-ReLU-pool stages (8 and 16 filters) on the luminance
    ``0.299 R + 0.587 G + 0.114 B`` of the un-normalised image, average-pooled to 4x4 so the
    classifier's width does not depend on the input size. ``classifier`` is a 64-unit hidden
    layer on the concatenated CNN and histogram features.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, bins: int = 8, grid: int = 3,
                 mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0,
                 ) -> None:
        super().__init__()
        _require_rgb(in_channels)
        self.histogram = ColourHistogram(bins, grid, mean, std)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4 + self.histogram.out_features, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        colour = self.histogram(x)
        pixels = x * self.histogram.std + self.histogram.mean
        gray = (pixels * self.luma).sum(dim=1, keepdim=True)
        shape = torch.flatten(self.features(gray), 1)
        return self.classifier(torch.cat([shape, colour], dim=1))


# Two 2x2 pools need 4 pixels; the 3x3 histogram grid needs 3.
@register("gray_hist", {"num_classes": 10, "in_channels": 3, "input_size": 32}, min_input_size=4)
def gray_hist(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Grayscale CNN plus 8-bin 3x3-grid colour histograms (32,170 parameters for 10 classes)."""
    return GrayHist(num_classes, in_channels)
