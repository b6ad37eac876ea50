"""Image folders with one subfolder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compactcnn.data.common import _check_positive, _one_line
from compactcnn.errors import CompactCNNError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _is_grayscale(image: Image.Image) -> bool:
    """GIFs and some PNGs are palette images; their palette says whether they carry colour."""
    band = image.getbands()[0]
    if band in ("1", "L", "I", "F"):
        return True
    if band == "P":
        rgb = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        return bool((rgb == rgb[:, :1]).all())
    return False


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here, with its name
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CompactCNNError(f"corrupt or unreadable image {path}: {_one_line(exc)}") from None
    return image


def load_image_folder(
    path: Path, size: int | None = None, channels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load ``path/<class>/<image>`` into float32 [N, C, H, W] in [0, 1], int64 labels, names.

    Labels follow the sorted class-folder names, so the mapping is stable across machines.
    Without ``size`` all images must already share one size: silently resizing would hide a
    mixed-up folder.
    """
    path = Path(path)
    _check_positive("size", size)
    if channels not in (None, 1, 3):
        raise CompactCNNError(f"channels must be 1 or 3, got {channels!r}")
    if not path.exists():
        raise CompactCNNError(f"image folder not found: {path}")
    if not path.is_dir():
        raise CompactCNNError(f"not a directory: {path} (expected one subfolder per class)")
    # Hidden folders are editor/OS clutter (.ipynb_checkpoints, .DS_Store dirs), not classes.
    class_dirs = sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not class_dirs:
        raise CompactCNNError(f"no class subfolders in {path}: expected one folder per class")

    files: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise CompactCNNError(
                f"empty image folder {class_dir}: no {', '.join(IMAGE_SUFFIXES)} files"
            )
        files.extend((p, label) for p in found)

    images = [_open_image(p) for p, _ in files]
    if channels is None:
        channels = 1 if all(_is_grayscale(image) for image in images) else 3
    mode = "L" if channels == 1 else "RGB"

    arrays = []
    first_path, first_size = files[0][0], images[0].size
    for (file, _), image in zip(files, images, strict=True):
        if size is not None:
            image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        elif image.size != first_size:
            raise CompactCNNError(
                f"image size mismatch: {file} is {image.size[0]}x{image.size[1]} but "
                f"{first_path} is {first_size[0]}x{first_size[1]}; pass a size to resize"
            )
        width, height = image.size
        arrays.append(np.asarray(image.convert(mode), dtype=np.uint8).reshape(height, width, -1))

    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return pixels.contiguous(), labels, [d.name for d in class_dirs]
