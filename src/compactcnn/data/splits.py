"""Train / validation / test splits, normalised with the training set's statistics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from compactcnn.data.colour import (
    COLOUR_CLASSES,
    COLOUR_SEED,
    COLOUR_SIZE,
    COLOUR_TEST,
    COLOUR_TRAIN,
    synthetic_colour,
)
from compactcnn.data.common import _check_positive
from compactcnn.data.folders import load_image_folder
from compactcnn.data.idx import load_fashion_mnist
from compactcnn.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_SEED,
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    synthetic,
)
from compactcnn.errors import CompactCNNError

# Folders have no test split of their own; this share of their images is held out as one.
FOLDER_TEST_FRACTION = 0.2


_DATASET_FORMS = "'fashion-mnist', 'synthetic', 'synthetic-colour' or 'folder:PATH'"


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

    train_x, train_y, test_x, test_y, num_classes = _source(spec, data_dir, limit, test_limit,
                                                            input_size)

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


def _source(spec: str, data_dir: Path | None, limit: int | None, test_limit: int | None,
            input_size: int | None):
    """(train images, train labels, test images, test labels, classes) of one data source."""
    if spec == "fashion-mnist":
        train_x, train_y = load_fashion_mnist(data_dir, "train", limit)
        test_x, test_y = load_fashion_mnist(data_dir, "test", test_limit)
        train_x, test_x = _resize(train_x, input_size), _resize(test_x, input_size)
        return train_x, train_y, test_x, test_y, 10
    elif spec == "synthetic":
        size = input_size or 28
        x, y = synthetic(
            SYNTHETIC_TRAIN + SYNTHETIC_TEST, (1, size, size), SYNTHETIC_CLASSES, SYNTHETIC_SEED
        )
        train_x, train_y = x[:SYNTHETIC_TRAIN][:limit], y[:SYNTHETIC_TRAIN][:limit]
        test_x, test_y = x[SYNTHETIC_TRAIN:][:test_limit], y[SYNTHETIC_TRAIN:][:test_limit]
        return train_x, train_y, test_x, test_y, SYNTHETIC_CLASSES
    elif spec == "synthetic-colour":
        x, y = synthetic_colour(COLOUR_TRAIN + COLOUR_TEST, input_size or COLOUR_SIZE,
                                COLOUR_CLASSES, COLOUR_SEED)
        train_x, train_y = x[:COLOUR_TRAIN][:limit], y[:COLOUR_TRAIN][:limit]
        test_x, test_y = x[COLOUR_TRAIN:][:test_limit], y[COLOUR_TRAIN:][:test_limit]
        return train_x, train_y, test_x, test_y, COLOUR_CLASSES
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
        return train_x, train_y, test_x, test_y, len(classes)
    raise CompactCNNError(f"unknown dataset {spec!r}: expected {_DATASET_FORMS}")

