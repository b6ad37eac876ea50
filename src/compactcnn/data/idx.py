"""IDX files (Fashion-MNIST, from Debian's dataset-fashion-mnist package)."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from compactcnn.data.common import _check_positive, _one_line
from compactcnn.errors import CompactCNNError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


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
