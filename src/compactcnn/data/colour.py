"""A fixed synthetic colour task whose classes need colour and shape together.

Class ``c`` is the pair (hue ``c // 3``, shape ``c % 3``): a square, a disc or a cross drawn in
the hue on a dark, noisy background. The task is built so that each cue alone is measurably
not enough:

* the hues are isoluminant (they differ only in chroma), so a grayscale view shows the shape
  but not the hue: shape alone can at best tell ``3`` of the classes apart within a hue, i.e.
  reach about ``1 / hues`` accuracy;
* the three shapes are scaled to cover the same area on average, and sizes and positions are
  jittered, so a colour histogram of the whole image shows the hue but hardly the shape: colour
  alone reaches about ``1/3``;
* both cues together identify the class.

That is what a model with separate colour and grayscale paths (``gray_hist``) is meant to
exploit. Images are in ``[0, 1]``; everything is drawn from one generator seeded by ``seed``.
``--data synthetic-colour`` is this task at fixed sizes (``COLOUR_*``), like a real data set.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from compactcnn.data.common import _check_positive
from compactcnn.errors import CompactCNNError

SHAPES = ("square", "disc", "cross")
# The fixed task behind --data synthetic-colour: 9 classes (3 hues x 3 shapes) at 32x32.
COLOUR_TRAIN, COLOUR_TEST, COLOUR_CLASSES, COLOUR_SIZE, COLOUR_SEED = 5000, 1000, 9, 32, 0
MAX_HUES = 6  # hues 60 degrees apart are still told apart easily under the colour noise

# ITU-R BT.601 luma weights, the same that gray_hist's grayscale branch uses.
LUMA = (0.299, 0.587, 0.114)

# Half-sizes that give the three shapes the same area: square 4 r^2, disc pi r^2,
# cross 20/9 r^2 (two 2r x 2r/3 bars).
_SCALE = torch.tensor([1.0, 2 / math.sqrt(math.pi), math.sqrt(36 / 20)])


def _isoluminant_hues(count: int, amplitude: float = 0.3) -> torch.Tensor:
    """``count`` RGB offsets evenly spaced on a circle in the plane of zero luma change."""
    luma = torch.tensor(LUMA, dtype=torch.float64)
    first = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    first -= (first @ luma) / (luma @ luma) * luma
    first /= first.norm()
    second = torch.linalg.cross(luma / luma.norm(), first)
    angles = torch.arange(count, dtype=torch.float64) * (2 * math.pi / count)
    offsets = torch.cos(angles)[:, None] * first + torch.sin(angles)[:, None] * second
    return (amplitude * offsets).float()


def _masks(shape: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean ``[n, size, size]`` masks: each sample's shape, jittered in size and position."""
    n = shape.numel()
    coords = torch.linspace(-1, 1, size)
    centre = 0.25 * (2 * torch.rand(n, 2, generator=generator) - 1)
    half = (0.3 + 0.15 * torch.rand(n, generator=generator)) * _SCALE[shape]
    dy = (coords[None, :, None] - centre[:, 0, None, None]).abs() / half[:, None, None]
    dx = (coords[None, None, :] - centre[:, 1, None, None]).abs() / half[:, None, None]
    square = torch.maximum(dy, dx) <= 1
    disc = dy**2 + dx**2 <= 1
    cross = ((dy <= 1) & (dx <= 1 / 3)) | ((dx <= 1) & (dy <= 1 / 3))
    return torch.stack([square, disc, cross], dim=1)[torch.arange(n), shape]


def synthetic_colour(n: int, size: int = 32, classes: int = 9,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``[n, 3, size, size]`` in ``[0, 1]`` and their labels, classes balanced.

    ``classes`` may be 2 to ``3 * MAX_HUES``; class ``c`` is hue ``c // 3`` and shape
    ``SHAPES[c % 3]``, so with fewer than three classes only the shape differs.
    """
    _check_positive("n", n)
    if isinstance(size, bool) or size < 8:
        raise CompactCNNError(f"size must be at least 8 pixels to draw the shapes, got {size!r}")
    if not 2 <= classes <= 3 * MAX_HUES:
        raise CompactCNNError(f"classes must be between 2 and {3 * MAX_HUES}, got {classes!r}")
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=generator)]
    hues = _isoluminant_hues(-(-classes // len(SHAPES)))
    inside = _masks(labels % len(SHAPES), size, generator)[:, None]
    # Shape and background brightness vary per image but never with the class.
    fg_luma = 0.5 + 0.1 * torch.rand(n, 1, 1, 1, generator=generator)
    bg_luma = 0.1 + 0.1 * torch.rand(n, 1, 1, 1, generator=generator)
    foreground = fg_luma + hues[labels // len(SHAPES)][:, :, None, None]
    noise = 0.05 * torch.randn(n, 3, size, size, generator=generator)
    images = torch.where(inside, foreground, bg_luma) + noise
    return images.clamp_(0, 1), labels


def write_image_folder(root: Path, n: int, size: int = COLOUR_SIZE,
                       classes: int = COLOUR_CLASSES, seed: int = COLOUR_SEED) -> Path:
    """Write ``n`` images of the task as PNG files, one subfolder per class (``c0``, ``c1``,
    ...), for ``--data folder:ROOT``: the task as a user's own colour images would arrive,
    quantised to 8 bits. The folder must not exist yet, so nothing is overwritten."""
    root = Path(root)
    if root.exists():
        raise CompactCNNError(f"{root} already exists; choose a new folder")
    images, labels = synthetic_colour(n, size, classes, seed)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    width = len(str(classes - 1))
    for c in range(classes):
        (root / f"c{c:0{width}d}").mkdir(parents=True)
    for k, (image, label) in enumerate(zip(pixels, labels.tolist(), strict=True)):
        Image.fromarray(image, "RGB").save(root / f"c{label:0{width}d}" / f"{k:05d}.png")
    return root
