"""Data loading: IDX parsing, Fashion-MNIST, image folders, splits and reproducible loaders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from compactcnn.data import (
    FASHION_MNIST_DIR,
    Splits,
    epoch_loader,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    make_loader,
    read_idx,
    synthetic,
)
from compactcnn.errors import CompactCNNError

IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}

needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX independently of the reader: big-endian dims and values."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, IDX_CODES[big.dtype], array.ndim])
    return header + np.asarray(array.shape, dtype=">u4").tobytes() + big.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


# --- read_idx ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", [(7, 5, 3), (11,)])
def test_read_idx_round_trips_uint8(tmp_path, compress, shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    tensor = read_idx(write_idx(tmp_path / "x.idx", array, compress))
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == shape
    assert np.array_equal(tensor.numpy(), array)


@settings(max_examples=60, deadline=None)
@given(
    array=st.sampled_from(sorted(IDX_CODES, key=str)).flatmap(
        lambda dtype: hnp.arrays(
            dtype.newbyteorder("="),
            hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
            elements={"allow_nan": False} if dtype.kind == "f" else None,
        )
    ),
    compress=st.booleans(),
)
def test_read_idx_round_trip_property(tmp_path_factory, array, compress):
    path = write_idx(tmp_path_factory.mktemp("idx") / "x.idx", array, compress)
    tensor = read_idx(path)
    assert tuple(tensor.shape) == array.shape
    assert np.array_equal(tensor.numpy(), array)


def test_read_idx_truncated_file(tmp_path):
    raw = idx_bytes(np.zeros((10, 4, 4), dtype=np.uint8))
    path = tmp_path / "short.idx"
    path.write_bytes(raw[:-60])
    with pytest.raises(CompactCNNError, match="expected 160 bytes of data, found 100") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "short.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((100, 4), dtype=np.uint8)))[:-20])
    with pytest.raises(CompactCNNError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_trailing_bytes(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)) + b"extra")
    with pytest.raises(CompactCNNError, match="expected 5 bytes of data, found 10"):
        read_idx(path)


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CompactCNNError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_unknown_dtype(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(CompactCNNError, match="unsupported IDX data type 0x42") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_garbage_gzip(tmp_path):
    path = tmp_path / "garbage.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(CompactCNNError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(CompactCNNError, match="IDX file not found"):
        read_idx(tmp_path / "nope.gz")


# --- Fashion-MNIST -----------------------------------------------------------------------------


@needs_fashion_mnist
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_fashion_mnist_slice(split):
    images, labels = load_fashion_mnist(split=split, limit=100)
    assert images.shape == (100, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (100,) and labels.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1 and images.max() > 0.9
    assert 0 <= labels.min() and labels.max() <= 9
    assert len(labels.unique()) == 10  # the first 100 are mixed, not sorted by class


def test_load_fashion_mnist_missing_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CompactCNNError, match="dataset-fashion-mnist") as info:
        load_fashion_mnist(missing)
    assert str(missing) in str(info.value) and "--data-dir" in str(info.value)


def test_load_fashion_mnist_plain_files_and_count_mismatch(tmp_path):
    images = np.full((6, 28, 28), 255, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(6, dtype=np.uint8), True)
    x, y = load_fashion_mnist(tmp_path, split="test")
    assert x.shape == (6, 1, 28, 28) and bool((x == 1).all())
    assert y.tolist() == list(range(6))

    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8), True)
    with pytest.raises(CompactCNNError, match="6 images but .* 5 labels"):
        load_fashion_mnist(tmp_path, split="test")


def test_load_fashion_mnist_rejects_bad_split():
    with pytest.raises(CompactCNNError, match="unknown Fashion-MNIST split 'val'"):
        load_fashion_mnist(split="val")


# --- image folders -----------------------------------------------------------------------------


def make_folder(root: Path, classes: dict[str, list[tuple[str, Image.Image]]]) -> Path:
    for name, images in classes.items():
        (root / name).mkdir(parents=True)
        for filename, image in images:
            image.save(root / name / filename)
    return root


def gray(value: int, size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("L", size, value)


def test_image_folder_labels_follow_sorted_class_names(tmp_path):
    root = make_folder(
        tmp_path / "data",
        {"zebra": [("a.png", gray(200))], "ant": [("b.png", gray(10)), ("c.bmp", gray(20))]},
    )
    (root / "ant" / "notes.txt").write_text("not an image")
    images, labels, classes = load_image_folder(root)
    assert classes == ["ant", "zebra"]
    assert labels.tolist() == [0, 0, 1]
    assert images.shape == (3, 1, 6, 8) and images.dtype == torch.float32
    assert torch.allclose(images[:, 0, 0, 0], torch.tensor([10, 20, 200]) / 255)


def test_image_folder_colour_and_channels(tmp_path):
    root = make_folder(
        tmp_path / "data",
        {
            "a": [("x.png", Image.new("RGB", (4, 4), (255, 0, 0)))],
            "b": [("y.gif", gray(128, (4, 4)))],
        },
    )
    rgb, _, _ = load_image_folder(root)
    assert rgb.shape == (2, 3, 4, 4)
    assert rgb[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(rgb[1, :, 0, 0], torch.full((3,), 128 / 255))
    forced, _, _ = load_image_folder(root, channels=1)
    assert forced.shape == (2, 1, 4, 4)


def test_image_folder_size_mismatch_names_file(tmp_path):
    root = make_folder(
        tmp_path / "data",
        {"a": [("one.png", gray(0, (8, 6)))], "b": [("two.png", gray(0, (9, 9)))]},
    )
    with pytest.raises(CompactCNNError, match="two.png is 9x9 .*one.png is 8x6"):
        load_image_folder(root)


def test_image_folder_size_resizes(tmp_path):
    root = make_folder(
        tmp_path / "data",
        {"a": [("one.png", gray(50, (8, 6)))], "b": [("two.png", gray(50, (9, 9)))]},
    )
    images, labels, _ = load_image_folder(root, size=5)
    assert images.shape == (2, 1, 5, 5)
    assert torch.allclose(images, torch.full_like(images, 50 / 255))


def test_image_folder_empty_class(tmp_path):
    root = make_folder(tmp_path / "data", {"a": [("one.png", gray(0))], "b": []})
    with pytest.raises(CompactCNNError, match="empty image folder") as info:
        load_image_folder(root)
    assert str(root / "b") in str(info.value)


def test_image_folder_corrupt_image(tmp_path):
    root = make_folder(tmp_path / "data", {"a": [("one.png", gray(0))]})
    (root / "a" / "two.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    with pytest.raises(CompactCNNError, match="corrupt or unreadable image") as info:
        load_image_folder(root)
    assert str(root / "a" / "two.png") in str(info.value)
    assert "\n" not in str(info.value)


def test_image_folder_truncated_image(tmp_path):
    root = make_folder(tmp_path / "data", {"a": [("one.png", gray(0, (64, 64)))]})
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    noisy.save(root / "a" / "two.png")
    (root / "a" / "two.png").write_bytes((root / "a" / "two.png").read_bytes()[:500])
    with pytest.raises(CompactCNNError, match="two.png"):
        load_image_folder(root)


def test_image_folder_bad_paths(tmp_path):
    with pytest.raises(CompactCNNError, match="image folder not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(CompactCNNError, match="not a directory"):
        load_image_folder(tmp_path / "file.png")
    (tmp_path / "flat").mkdir()
    gray(0).save(tmp_path / "flat" / "x.png")
    with pytest.raises(CompactCNNError, match="no class subfolders"):
        load_image_folder(tmp_path / "flat")


# --- synthetic data and splits -----------------------------------------------------------------


def test_synthetic_is_deterministic_and_learnable():
    x, y = synthetic(600, (1, 12, 12), num_classes=4, seed=3)
    x2, y2 = synthetic(600, (1, 12, 12), num_classes=4, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, synthetic(600, (1, 12, 12), num_classes=4, seed=4)[0])
    assert x.shape == (600, 1, 12, 12) and 0 <= x.min() and x.max() <= 1
    assert torch.bincount(y).tolist() == [150] * 4

    # Nearest class mean, fitted on one half and scored on the other, is far above chance.
    flat = x.flatten(1)
    centroids = torch.stack([flat[:300][y[:300] == c].mean(0) for c in range(4)])
    predicted = torch.cdist(flat[300:], centroids).argmin(1)
    assert (predicted == y[300:]).float().mean() > 0.8


def test_load_dataset_synthetic_splits_and_normalisation():
    splits = load_dataset("synthetic", val_fraction=0.25, seed=1)
    assert isinstance(splits, Splits)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1500, 500, 500)
    assert splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    assert splits.name == "synthetic"
    train_x = splits.train.tensors[0]
    assert abs(train_x.mean().item()) < 1e-4
    assert abs(train_x.std(unbiased=False).item() - 1) < 1e-4
    assert len(splits.mean) == len(splits.std) == 1 and splits.std[0] > 0
    # The test set is only shifted/scaled with the train statistics, not renormalised itself.
    test_x = splits.test.tensors[0]
    assert abs(test_x.mean().item()) < 0.1 and not abs(test_x.mean().item()) < 1e-6


def test_load_dataset_val_is_disjoint_from_train_and_seeded():
    a = load_dataset("synthetic", limit=300, test_limit=50, seed=0)
    assert (len(a.train), len(a.val), len(a.test)) == (270, 30, 50)
    train_rows = {tuple(row.tolist()) for row in a.train.tensors[0].flatten(1)[:, :16]}
    val_rows = {tuple(row.tolist()) for row in a.val.tensors[0].flatten(1)[:, :16]}
    assert len(train_rows) == 270 and len(val_rows) == 30 and not train_rows & val_rows

    again = load_dataset("synthetic", limit=300, test_limit=50, seed=0)
    other = load_dataset("synthetic", limit=300, test_limit=50, seed=1)
    assert torch.equal(a.val.tensors[1], again.val.tensors[1])
    assert torch.equal(a.val.tensors[0], again.val.tensors[0])
    assert not torch.equal(a.val.tensors[0], other.val.tensors[0])


def test_load_dataset_input_size():
    splits = load_dataset("synthetic", limit=20, test_limit=5, input_size=16)
    assert splits.input_shape == (1, 16, 16)
    assert splits.test.tensors[0].shape == (5, 1, 16, 16)


def raw(splits: Splits, subset: torch.utils.data.TensorDataset) -> torch.Tensor:
    """Undo the stored normalisation."""
    mean, std = torch.tensor(splits.mean), torch.tensor(splits.std)
    return subset.tensors[0] * std[:, None, None] + mean[:, None, None]


def test_load_dataset_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = make_folder(
        tmp_path / "data",
        {
            name: [
                (f"{i}.png", Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)))
                for i in range(10)
            ]
            for name in ("cat", "dog")
        },
    )
    splits = load_dataset(f"folder:{root}", val_fraction=0.25, input_size=4)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)
    assert splits.num_classes == 2 and splits.input_shape == (3, 4, 4)
    assert len(splits.mean) == 3
    # The held-out test set does not move with the seed (only its normalisation does, since the
    # train statistics change with the validation split); validation does move.
    other = load_dataset(f"folder:{root}", val_fraction=0.25, input_size=4, seed=5)
    assert torch.allclose(raw(splits, splits.test), raw(other, other.test), atol=1e-6)
    assert not torch.allclose(raw(splits, splits.val), raw(other, other.val))


@needs_fashion_mnist
def test_load_dataset_fashion_mnist_with_limit():
    splits = load_dataset("fashion-mnist", limit=200, test_limit=50)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 50)
    assert splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    assert abs(splits.train.tensors[0].mean().item()) < 1e-4
    assert splits.train.tensors[1].dtype == torch.int64

    resized = load_dataset("fashion-mnist", limit=10, test_limit=10, input_size=32)
    assert resized.input_shape == (1, 32, 32) and resized.test.tensors[0].shape == (10, 1, 32, 32)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("mnist", {}, "unknown dataset 'mnist': expected 'fashion-mnist', 'synthetic', "
                      "'synthetic-colour' or 'folder:PATH'"),
        ("folder:", {}, "unknown dataset"),
        ("synthetic", {"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ("synthetic", {"val_fraction": -0.1}, "val_fraction"),
        ("synthetic", {"limit": 0}, "limit must be a positive integer"),
    ],
)
def test_load_dataset_rejects_bad_arguments(spec, kwargs, message):
    with pytest.raises(CompactCNNError, match=message):
        load_dataset(spec, **kwargs)


def test_load_dataset_missing_fashion_mnist(tmp_path):
    with pytest.raises(CompactCNNError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


# --- loaders -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set() -> torch.utils.data.TensorDataset:
    x = torch.arange(50 * 3 * 5 * 5, dtype=torch.float32).reshape(50, 3, 5, 5) + 1
    return torch.utils.data.TensorDataset(x, torch.arange(50))


def batches(loader) -> list[list[torch.Tensor]]:
    return [list(batch) for batch in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) for ba, bb in zip(a, b, strict=True) for x, y in zip(ba, bb, strict=True)
    )


@pytest.mark.parametrize("augment", [False, True])
def test_epoch_loader_depends_only_on_seed_and_epoch(small_set, augment):
    first = batches(epoch_loader(small_set, 8, seed=7, epoch=3, augment=augment))
    torch.manual_seed(123)  # the global RNG must not matter...
    torch.rand(10)
    second = batches(epoch_loader(small_set, 8, seed=7, epoch=3, augment=augment))
    assert same(first, second)
    assert [len(b[1]) for b in first] == [8] * 6 + [2]
    assert sorted(torch.cat([b[1] for b in first]).tolist()) == list(range(50))
    assert not same(first, batches(epoch_loader(small_set, 8, seed=7, epoch=4, augment=augment)))
    assert not same(first, batches(epoch_loader(small_set, 8, seed=8, epoch=3, augment=augment)))


def test_loaders_leave_global_rng_alone(small_set):
    state = torch.get_rng_state()
    batches(epoch_loader(small_set, 8, seed=0, epoch=0, augment=True))
    batches(make_loader(small_set, 8, shuffle=False, seed=0))
    assert torch.equal(state, torch.get_rng_state())


def test_make_loader_without_shuffle_keeps_order(small_set):
    labels = torch.cat([b[1] for b in make_loader(small_set, 16, shuffle=False, seed=0)])
    assert labels.tolist() == list(range(50))


def candidates(image: torch.Tensor) -> list[torch.Tensor]:
    """Every 2-pixel-padded crop of ``image``, flipped or not."""
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    h, w = image.shape[-2:]
    crops = [padded[:, dy : dy + h, dx : dx + w] for dy in range(5) for dx in range(5)]
    return crops + [c.flip(-1) for c in crops]


def test_augmentation_is_crop_and_flip(small_set):
    images, labels = small_set.tensors
    seen = set()
    for epoch in range(4):
        for x, y in epoch_loader(small_set, 16, seed=0, epoch=epoch, augment=True):
            assert x.shape[1:] == (3, 5, 5)
            for image, label in zip(x, y, strict=True):
                options = candidates(images[label])
                matches = [i for i, c in enumerate(options) if torch.equal(image, c)]
                assert matches, f"sample {label} is not a padded crop/flip of its source"
                seen.add(matches[0])
    assert len(seen) > 20  # many different shifts and both flips actually occur


def test_augmented_batches_do_not_depend_on_workers(small_set):
    alone = batches(epoch_loader(small_set, 8, seed=2, epoch=1, augment=True))
    pooled = batches(epoch_loader(small_set, 8, seed=2, epoch=1, augment=True, workers=2))
    assert same(alone, pooled)


def test_make_loader_rejects_bad_batch_size(small_set):
    with pytest.raises(CompactCNNError, match="batch_size must be a positive integer"):
        make_loader(small_set, 0, shuffle=True, seed=0)
