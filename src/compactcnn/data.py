"""Datasets as in-memory tensors, and loaders whose order is a pure function of (seed, epoch).

Everything the experiments use is small enough to hold in memory, so every source ends up as
plain tensors in a ``TensorDataset``: no per-sample Python transforms on the hot path, nothing
downloaded, nothing cached to disk. Fashion-MNIST is read from Debian's ``dataset-fashion-mnist``
package (or any directory holding the same IDX files); anything else is a folder of images or
synthetic data for smoke tests.

Randomness never comes from torch's global RNG: shuffling and augmentation draw from generators
seeded by ``(seed, epoch)``, so a training run resumed at epoch k sees exactly the batches that an
uninterrupted run would have seen.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset, default_collate

from compactcnn.errors import CompactCNNError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

# Folders have no test split of their own; this share of their images is held out as one.
FOLDER_TEST_FRACTION = 0.2

# The synthetic task is fixed (like a real dataset) so that runs with different seeds differ
# only in their split and training randomness, not in the problem they solve.
SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_CLASSES, SYNTHETIC_SEED = 2000, 500, 10, 0

AUGMENT_PADDING = 2

# IDX type codes (http://yann.lecun.com/exdb/mnist/): multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_DATASET_FORMS = "'fashion-mnist', 'synthetic' or 'folder:PATH'"


def _one_line(exc: BaseException) -> str:
    """Library messages can span lines; the CLI promises a single line per error."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise CompactCNNError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------
# IDX files (Fashion-MNIST)
# --------------------------------------------------------------------------------------------


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file, gzip-compressed or plain, into a tensor of its declared shape.

    The payload length must match the header exactly: a truncated download would otherwise
    surface much later as a reshape error or, worse, as silently shorter data.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CompactCNNError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise CompactCNNError(f"cannot read IDX file {path}: {_one_line(exc)}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise CompactCNNError(f"corrupt gzip in IDX file {path}: {_one_line(exc)}") from None

    if len(data) < 4:
        raise CompactCNNError(
            f"corrupt IDX file {path}: {len(data)} bytes, too short for the 4-byte magic number"
        )
    if data[0] != 0 or data[1] != 0:
        raise CompactCNNError(
            f"not an IDX file {path}: magic number 0x{data[:4].hex()} does not start with 0000"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise CompactCNNError(f"unsupported IDX data type 0x{code:02x} in {path}")
    if ndim == 0:
        raise CompactCNNError(f"corrupt IDX file {path}: header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CompactCNNError(
            f"corrupt IDX file {path}: header needs {header} bytes for {ndim} dimensions, "
            f"file has {len(data)}"
        )
    dims = [int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)]
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise CompactCNNError(
            f"corrupt IDX file {path}: expected {expected} bytes of data, found {found}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    # astype copies into native byte order: torch accepts neither big-endian nor read-only arrays.
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _fashion_file(data_dir: Path, stem: str) -> Path:
    """Debian ships the files gzipped; people who unpacked them themselves keep the plain name."""
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    raise CompactCNNError(
        f"Fashion-MNIST not found in {data_dir}: install Debian's package 'dataset-fashion-mnist' "
        "(apt-get install dataset-fashion-mnist) or pass --data-dir"
    )


def load_fashion_mnist(
    data_dir: Path | None = None, split: str = "train", limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return images as float32 [N, 1, 28, 28] in [0, 1] and labels as int64 [N].

    ``limit`` keeps the first N examples; it is applied before the conversion to float so that
    a small slice does not cost the memory of the whole split.
    """
    if split not in _FASHION_FILES:
        raise CompactCNNError(f"unknown Fashion-MNIST split {split!r}: expected 'train' or 'test'")
    _check_positive("limit", limit)
    data_dir = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    image_path, label_path = (_fashion_file(data_dir, stem) for stem in _FASHION_FILES[split])

    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise CompactCNNError(
            f"not Fashion-MNIST images: {image_path} holds {images.dtype} "
            f"{tuple(images.shape)}, expected uint8 (N, 28, 28)"
        )
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise CompactCNNError(
            f"not Fashion-MNIST labels: {label_path} holds {labels.dtype} "
            f"{tuple(labels.shape)}, expected uint8 (N,)"
        )
    if len(images) != len(labels):
        raise CompactCNNError(
            f"Fashion-MNIST {split} split disagrees: {image_path} has {len(images)} images "
            f"but {label_path} has {len(labels)} labels"
        )
    if len(labels) and int(labels.max()) > 9:
        raise CompactCNNError(
            f"not Fashion-MNIST labels: {label_path} contains label {int(labels.max())} (> 9)"
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images.unsqueeze(1).float().div_(255), labels.long()


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def synthetic(
    n: int,
    shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of one fixed random prototype per class: learnable, but not by memorising.

    Prototypes are smooth (low-resolution noise upsampled) so that convolutions and pooling,
    not just a linear layer on raw pixels, can pick them up. Classes are balanced.
    """
    _check_positive("n", n)
    if len(shape) != 3 or any(isinstance(d, bool) or d < 1 for d in shape):
        raise CompactCNNError(f"shape must be three positive integers (C, H, W), got {shape!r}")
    if num_classes < 2:
        raise CompactCNNError(f"num_classes must be at least 2, got {num_classes}")
    c, h, w = shape
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, c, max(1, h // 4), max(1, w // 4), generator=generator)
    prototypes = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    noise = 0.3 * torch.randn(n, c, h, w, generator=generator)
    return (prototypes[labels] + noise).clamp_(0, 1), labels


# --------------------------------------------------------------------------------------------
# Train / validation / test splits
# --------------------------------------------------------------------------------------------


@dataclass
class Splits:
    """Normalised train/val/test sets plus what a model and a report need to know about them.

    ``mean``/``std`` are per channel and were computed on ``train`` only; they are kept so
    that new inputs (exported models, demos) can be normalised the same way.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str


def _split_off(
    images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split a random ``fraction`` off; both parts keep their original relative order."""
    n = len(labels)
    taken = round(n * fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    rest_idx, taken_idx = perm[taken:].sort().values, perm[:taken].sort().values
    return (images[rest_idx], labels[rest_idx]), (images[taken_idx], labels[taken_idx])


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp_(0, 1)


def load_dataset(
    spec: str,
    *,
    data_dir: Path | None = None,
    val_fraction: float = 0.1,
    limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    input_size: int | None = None,
) -> Splits:
    """Load ``spec`` and return normalised train/val/test splits.

    ``limit`` caps the training pool (before validation is split off) and ``test_limit`` the
    test set, both by taking the first examples. Validation comes out of the training pool by a
    permutation seeded with ``seed``; the test set never depends on ``seed``, so runs with
    different seeds are scored on the same examples.
    """
    if not 0 <= val_fraction < 1:
        raise CompactCNNError(f"val_fraction must be in [0, 1), got {val_fraction}")
    _check_positive("limit", limit)
    _check_positive("test_limit", test_limit)
    _check_positive("input_size", input_size)

    if spec == "fashion-mnist":
        train_x, train_y = load_fashion_mnist(data_dir, "train", limit)
        test_x, test_y = load_fashion_mnist(data_dir, "test", test_limit)
        train_x, test_x = _resize(train_x, input_size), _resize(test_x, input_size)
        num_classes = 10
    elif spec == "synthetic":
        size = input_size or 28
        x, y = synthetic(
            SYNTHETIC_TRAIN + SYNTHETIC_TEST, (1, size, size), SYNTHETIC_CLASSES, SYNTHETIC_SEED
        )
        train_x, train_y = x[:SYNTHETIC_TRAIN][:limit], y[:SYNTHETIC_TRAIN][:limit]
        test_x, test_y = x[SYNTHETIC_TRAIN:][:test_limit], y[SYNTHETIC_TRAIN:][:test_limit]
        num_classes = SYNTHETIC_CLASSES
    elif spec.startswith("folder:") and spec != "folder:":
        folder = Path(spec.removeprefix("folder:"))
        x, y, classes = load_image_folder(folder, size=input_size)
        if len(y) < 2:
            raise CompactCNNError(
                f"image folder {folder} has {len(y)} image; need at least 2 to hold out a test set"
            )
        (train_x, train_y), (test_x, test_y) = _split_off(x, y, FOLDER_TEST_FRACTION, seed=0)
        train_x, train_y = train_x[:limit], train_y[:limit]
        test_x, test_y = test_x[:test_limit], test_y[:test_limit]
        num_classes = len(classes)
    else:
        raise CompactCNNError(f"unknown dataset {spec!r}: expected {_DATASET_FORMS}")

    (train_x, train_y), (val_x, val_y) = _split_off(train_x, train_y, val_fraction, seed)
    if len(train_y) == 0:
        raise CompactCNNError(
            f"dataset {spec!r}: val_fraction={val_fraction} leaves no training examples"
        )

    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3), unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays as is

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - mean[:, None, None]) / std[:, None, None]

    return Splits(
        train=TensorDataset(normalise(train_x), train_y),
        val=TensorDataset(normalise(val_x), val_y),
        test=TensorDataset(normalise(test_x), test_y),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        num_classes=num_classes,
        input_shape=tuple(train_x.shape[1:]),
        name=spec,
    )


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


class _AugmentSampler(Sampler[tuple[int, int, int, bool]]):
    """Yields ``(index, dy, dx, flip)``: the order and each sample's crop/flip, all drawn here.

    Drawing augmentation parameters in the sampler (main process, own generator) rather than in
    workers makes them independent of ``workers`` and of which worker gets which batch.
    """

    def __init__(self, n: int, shuffle: bool, generator: torch.Generator) -> None:
        self.n, self.shuffle, self.generator = n, shuffle, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int, int, bool]]:
        g = self.generator
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        shifts = torch.randint(0, 2 * AUGMENT_PADDING + 1, (self.n, 2), generator=g)
        flips = torch.randint(0, 2, (self.n,), generator=g).bool()
        for i, (dy, dx), flip in zip(order.tolist(), shifts.tolist(), flips.tolist(), strict=True):
            yield i, dy, dx, flip


class _WithAugmentParams(Dataset):
    """Passes the sampler's augmentation parameters through to the collate function."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int, bool]):
        index, dy, dx, flip = key
        image, label = self.base[index]
        return image, label, dy, dx, flip


def _augment_collate(samples: Sequence[tuple]) -> list[torch.Tensor]:
    """Random crop from a zero-padded image plus horizontal flip, for a whole batch at once."""
    images, labels, dy, dx, flip = zip(*samples, strict=True)
    x = torch.stack(images)
    _, _, h, w = x.shape
    p = AUGMENT_PADDING
    padded = F.pad(x, (p, p, p, p))
    rows = torch.tensor(dy)[:, None] + torch.arange(h)  # [B, H]
    cols = torch.tensor(dx)[:, None] + torch.arange(w)  # [B, W]
    batch = torch.arange(len(samples))[:, None, None]
    # Advanced indices separated by a slice move to the front: result is [B, H, W, C].
    cropped = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    out = torch.where(torch.tensor(flip)[:, None, None, None], cropped.flip(-1), cropped)
    return [out.contiguous(), default_collate(labels)]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    augment: bool = False,
    workers: int = 0,
) -> DataLoader:
    """A loader whose randomness comes only from a generator seeded with ``seed``.

    Iterating the same loader again gives a new (but still reproducible) order; for an order
    that depends only on the epoch number, as resuming needs, use :func:`epoch_loader`.
    The generator is passed even without shuffling because DataLoader otherwise draws its
    worker base seed from the global RNG, which would shift every later random draw.
    """
    _check_positive("batch_size", batch_size)
    if workers < 0:
        raise CompactCNNError(f"workers must be >= 0, got {workers}")
    generator = torch.Generator().manual_seed(seed)
    if not augment:
        return DataLoader(
            dataset, batch_size, shuffle=shuffle, num_workers=workers, generator=generator
        )
    return DataLoader(
        _WithAugmentParams(dataset),
        batch_size,
        sampler=_AugmentSampler(len(dataset), shuffle, generator),  # type: ignore[arg-type]
        collate_fn=_augment_collate,
        num_workers=workers,
        generator=generator,
    )


def _epoch_seed(seed: int, epoch: int) -> int:
    """Mix (seed, epoch) so that nearby pairs such as (0, 1) and (1, 0) give unrelated streams."""
    if seed < 0 or epoch < 0:
        raise CompactCNNError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    augment: bool = False,
    workers: int = 0,
) -> DataLoader:
    """A shuffling loader for one epoch whose batches depend only on (seed, epoch).

    A run resumed from a checkpoint at epoch k builds the same loader an uninterrupted run
    would have, so it reproduces that run exactly.
    """
    return make_loader(
        dataset,
        batch_size,
        shuffle=True,
        seed=_epoch_seed(seed, epoch),
        augment=augment,
        workers=workers,
    )
