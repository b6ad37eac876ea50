"""A compact device CNN after Zheng et al. (2015): a grayscale CNN plus a fixed colour histogram.

Colour costs a CNN three times the first-layer filters but is cheap to describe without any
learning: a per-patch colour histogram. So the network splits the work: a small CNN sees only
the luminance (shape and texture), a parameter-free extractor summarises colour, and a small
classifier reads both. Compared with an RGB CNN of the same width, colour costs nothing in
convolution weights, only the classifier inputs of the histogram.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from compactcnn.errors import CompactCNNError
from compactcnn.models.registry import Normalisation, register

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
        if not (type(bins) is int and type(grid) is int and bins >= 1 and grid >= 1):
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
        # A scatter-add rather than a bincount: the same exact counts, and it also runs on
        # the meta device (shape tracing) and exports to ONNX.
        index = (patch * self.bins + value_bin).flatten(2)
        counts = x.new_zeros(n, 3, self.grid**2 * self.bins).scatter_add_(
            2, index, x.new_ones(index.shape))
        counts = counts.view(n, 3, self.grid**2, self.bins)
        return (counts / counts.sum(dim=-1, keepdim=True)).flatten(1)


PARTS = ("both", "cnn", "histogram")
# conv1 filters, conv2 filters, hidden units: the published network's scale.
WIDTHS = (8, 16, 64)
POOLED = 4  # the CNN's output side, whatever the input size


class GrayHist(nn.Module):
    """Luminance CNN (``features``) and colour histogram (``histogram``) into one classifier.

    The CNN is two 3x3 conv-ReLU-pool stages (``widths[0]`` and ``widths[1]`` filters) on the
    luminance ``0.299 R + 0.587 G + 0.114 B`` of the image, standardised (``luminance``),
    average-pooled to 4x4 so the classifier's width does not depend on the input size. The
    classifier is a ``widths[2]``-unit hidden layer on the concatenated CNN and histogram
    features, then ``out``. Its hidden layer on the concatenation ``[s; c]`` is computed as
    ``shape_fc(s) + colour_fc(c)`` (the two column blocks of one weight matrix, so the same
    function and the same parameters): every tool then sees a flatten into a linear layer,
    which it handles, and the hidden units couple the two blocks like the two branches of a
    residual add. torch-pruning 1.6 mis-maps a flatten that feeds a concatenation (it spreads
    one channel over ``columns / channels`` inputs of the next layer), which would leave
    compaction unable to remove a dead CNN filter.

    ``parts`` says which feature sets the classifier reads: ``both``, ``cnn`` (the CNN alone:
    the network without colour) or ``histogram`` (colour alone: no CNN at all), so that what
    each part contributes can be measured with everything else unchanged.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, bins: int = 8, grid: int = 3,
                 mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0,
                 widths: Sequence[int] = WIDTHS, parts: str = "both") -> None:
        super().__init__()
        _require_rgb(in_channels)
        if parts not in PARTS:
            raise CompactCNNError(f"parts must be one of {', '.join(PARTS)}, got {parts!r}")
        if len(widths) != 3 or not all(type(w) is int and w > 0 for w in widths):
            raise CompactCNNError(f"widths must be three positive integers (conv1, conv2, "
                                  f"hidden), got {widths!r}")
        conv1, conv2, hidden = widths
        self.histogram = ColourHistogram(bins, grid, mean, std)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1))
        self.features = self.shape_fc = self.colour_fc = None
        if parts != "histogram":
            self.features = nn.Sequential(
                nn.Conv2d(1, conv1, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(conv1, conv2, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.AdaptiveAvgPool2d(POOLED),
            )
            self.shape_fc = nn.Linear(conv2 * POOLED**2, hidden)
        if parts != "cnn":
            # One bias for the hidden layer: shape_fc's, when there is one.
            self.colour_fc = nn.Linear(self.histogram.out_features, hidden,
                                       bias=parts == "histogram")
        self.relu = nn.ReLU()
        self.out = nn.Linear(hidden, num_classes)

    def luminance(self, x: Tensor) -> Tensor:
        """The standardised luminance ``[N, 1, H, W]`` of normalised images ``x``: what the CNN
        sees.

        ``sum_c luma_c * (pixel_c - mean_c)``, divided by its standard deviation for
        independent channels, ``sqrt(sum_c (luma_c * std_c)^2)``; as the pixels are
        ``mean + std * x``, that is a fixed linear combination of ``x``. Any affine function of
        the luminance hides an isoluminant colour change just as well, and standardising it, as
        every other model's inputs are, lets the small CNN learn at the same learning rate (fed
        the raw luminance, in [0, 1] with little contrast, it sat at chance for several epochs
        on synthetic-colour).
        """
        weights = self.luma * self.histogram.std
        return (x * weights).sum(dim=1, keepdim=True) / weights.square().sum().sqrt()

    def forward(self, x: Tensor) -> Tensor:
        _require_rgb(x.shape[1])
        hidden = 0
        if self.features is not None:
            hidden = self.shape_fc(torch.flatten(self.features(self.luminance(x)), 1))
        if self.colour_fc is not None:
            hidden = hidden + self.colour_fc(self.histogram(x))
        return self.out(self.relu(hidden))


def parameters_at(widths: Sequence[int], num_classes: int, bins: int = 8, grid: int = 3) -> int:
    """The parameters of ``GrayHist(parts="both")`` at ``widths``, without building it."""
    conv1, conv2, hidden = widths
    inputs = conv2 * POOLED**2 + 3 * grid * grid * bins
    return (10 * conv1 + (9 * conv1 + 1) * conv2 + (inputs + 1) * hidden
            + (hidden + 1) * num_classes)


def widths_for(params: int, num_classes: int, bins: int = 8, grid: int = 3) -> tuple[int, int, int]:
    """Widths at which ``GrayHist(parts="both")`` holds about ``params`` parameters.

    So that the network can enter a comparison at a parameter budget. The three widths keep the
    published proportions (1 : 2 : 8) as far as the budget allows: of the widths whose count
    lands within 1% below ``params`` (the hidden layer takes up the difference; never above,
    as a budget is a ceiling), those closest to the proportions; if none does, the closest
    count. Refuses a budget below the smallest network (widths 1, 1, 1).
    """
    smallest = parameters_at((1, 1, 1), num_classes, bins, grid)
    if params < smallest:
        raise CompactCNNError(f"gray_hist needs at least {smallest:,} parameters (one filter "
                              f"per convolution, one hidden unit); the budget is {params:,}")
    best: tuple[tuple[bool, float, float], tuple[int, int, int]] | None = None
    for conv2 in range(1, 4 * WIDTHS[1] * 8):
        conv1 = max(1, round(conv2 * WIDTHS[0] / WIDTHS[1]))
        fixed = parameters_at((conv1, conv2, 0), num_classes, bins, grid)
        per_unit = parameters_at((conv1, conv2, 1), num_classes, bins, grid) - fixed
        hidden = (params - fixed) // per_unit  # at most the budget, like a pruned network
        if hidden < 1:
            break
        miss = abs(parameters_at((conv1, conv2, hidden), num_classes, bins, grid) - params)
        off = abs(math.log(hidden / (conv2 * WIDTHS[2] / WIDTHS[1])))
        score = (False, off, miss) if miss <= 0.01 * params else (True, miss, off)
        if best is None or score < best[0]:
            best = (score, (conv1, conv2, hidden))
    assert best is not None  # conv2 = 1 leaves room for a hidden unit: params >= smallest
    return best[1]


def _build(parts: str, num_classes: int, in_channels: int, bins: int, widths: Sequence[int],
           normalisation: Normalisation | None) -> nn.Module:
    mean, std = normalisation or (0.0, 1.0)
    return GrayHist(num_classes, in_channels, bins, mean=mean, std=std, widths=tuple(widths),
                    parts=parts)


_COLOUR = {"num_classes": 10, "in_channels": 3, "input_size": 32}
_OPTIONS = {"bins": 8, "widths": list(WIDTHS)}
# Two 2x2 pools need 4 pixels; the 3x3 histogram grid needs 3.
_MIN_INPUT = 4


@register("gray_hist", _COLOUR, min_input_size=_MIN_INPUT, options=_OPTIONS, reads_pixels=True)
def gray_hist(*, num_classes: int, in_channels: int, input_size: int, bins: int,
              widths: Sequence[int], normalisation: Normalisation | None) -> nn.Module:
    """Grayscale CNN plus 8-bin 3x3-grid colour histograms (32,170 parameters for 10 classes)."""
    return _build("both", num_classes, in_channels, bins, widths, normalisation)


@register("gray_hist_cnn", _COLOUR, min_input_size=_MIN_INPUT, options=_OPTIONS,
          reads_pixels=True)
def gray_hist_cnn(*, num_classes: int, in_channels: int, input_size: int, bins: int,
                  widths: Sequence[int], normalisation: Normalisation | None) -> nn.Module:
    """gray_hist without the histogram: the grayscale CNN alone (18,346 parameters for 10
    classes); ``bins`` is unused, kept so that the three parts take the same options."""
    return _build("cnn", num_classes, in_channels, bins, widths, normalisation)


@register("gray_hist_colour", _COLOUR, min_input_size=_MIN_INPUT, options=_OPTIONS,
          reads_pixels=True)
def gray_hist_colour(*, num_classes: int, in_channels: int, input_size: int, bins: int,
                     widths: Sequence[int], normalisation: Normalisation | None) -> nn.Module:
    """gray_hist without the CNN: the colour histogram and the classifier alone (14,538
    parameters for 10 classes); the convolution widths are unused."""
    return _build("histogram", num_classes, in_channels, bins, widths, normalisation)
