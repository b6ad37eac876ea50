"""The colour histogram extractor, the gray_hist models and the synthetic colour task."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compactcnn.cli import main
from compactcnn.data import load_dataset
from compactcnn.data.colour import synthetic_colour, write_image_folder
from compactcnn.errors import CompactCNNError
from compactcnn.models import create
from compactcnn.models.gray_hist import (
    LUMA,
    ColourHistogram,
    GrayHist,
    parameters_at,
    widths_for,
)
from tests.fixtures_models import train_steps


def slow_histogram(images: torch.Tensor, bins: int, grid: int, mean: list[float],
                   std: list[float]) -> torch.Tensor:
    """One pixel at a time; the arithmetic on each value is float32, as in the extractor."""
    n, _, h, w = images.shape
    counts = torch.zeros(n, 3, grid, grid, bins)
    for i in range(n):
        for c in range(3):
            for y in range(h):
                for x in range(w):
                    value = images[i, c, y, x] * torch.tensor(std[c]) + torch.tensor(mean[c])
                    b = min(max(int(torch.floor(value * bins)), 0), bins - 1)
                    counts[i, c, y * grid // h, x * grid // w, b] += 1
    return (counts / counts.sum(dim=-1, keepdim=True)).flatten(1)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(3, 9), w=st.integers(3, 9), bins=st.integers(1, 9),
       grid=st.integers(1, 3), normalised=st.booleans(), seed=st.integers(0, 2**16))
def test_histogram_matches_a_per_pixel_reference(n, h, w, bins, grid, normalised, seed):
    generator = torch.Generator().manual_seed(seed)
    mean, std = ([0.4, 0.5, 0.6], [0.2, 0.3, 0.25]) if normalised else ([0.0] * 3, [1.0] * 3)
    images = torch.rand(n, 3, h, w, generator=generator) * 1.2 - 0.1  # some outside [0, 1]
    if normalised:
        images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    hist = ColourHistogram(bins, grid, mean, std)(images)
    assert hist.shape == (n, 3 * grid * grid * bins)
    assert torch.equal(hist, slow_histogram(images, bins, grid, mean, std))
    sums = hist.view(n, 3, grid * grid, bins).sum(dim=-1)
    assert torch.allclose(sums, torch.ones_like(sums))


def test_histogram_refuses_what_it_cannot_describe():
    with pytest.raises(CompactCNNError, match="RGB"):
        ColourHistogram()(torch.rand(1, 1, 8, 8))
    with pytest.raises(CompactCNNError, match="cannot be cut into 3x3"):
        ColourHistogram(grid=3)(torch.rand(1, 3, 2, 8))
    with pytest.raises(CompactCNNError, match="one value per RGB channel"):
        ColourHistogram(mean=[0.5, 0.5])


def test_gray_hist_needs_colour_input(tmp_path, capsys):
    with pytest.raises(CompactCNNError, match=r"^gray_hist needs RGB input \(3 channels\), got 1$"):
        create("gray_hist", in_channels=1)
    with pytest.raises(CompactCNNError, match="RGB"):
        create("gray_hist")(torch.rand(2, 1, 32, 32))
    argv = ["train", "--model", "gray_hist", "--data", "synthetic", "--limit", "100",
            "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "compactcnn: error: gray_hist needs RGB input (3 channels), got 1\n"


def test_the_cnn_sees_the_standardised_luminance():
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    model = GrayHist(10, mean=mean, std=std)
    pixels = torch.rand(4, 3, 8, 8)
    x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    luma = torch.tensor(LUMA).view(1, 3, 1, 1)
    centred = ((pixels - torch.tensor(mean).view(1, 3, 1, 1)) * luma).sum(1, keepdim=True)
    spread = (luma.flatten() * torch.tensor(std)).square().sum().sqrt()
    assert torch.allclose(model.luminance(x), centred / spread, atol=1e-6)


def test_gray_hist_size_and_parts():
    model = create("gray_hist")
    assert sum(p.numel() for p in model.parameters()) == 32_170 == parameters_at((8, 16, 64), 10)
    assert model.features[0].in_channels == 1  # the CNN sees luminance only
    assert model(torch.rand(2, 3, 4, 4)).shape == (2, 10)
    cnn, colour = create("gray_hist_cnn"), create("gray_hist_colour")
    assert cnn.colour_fc is None and colour.features is None and colour.shape_fc is None
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        # The CNN alone cannot see colour: an isoluminant change leaves it unmoved.
        shift = torch.tensor([0.1, -0.1 * LUMA[0] / LUMA[1], 0.0]).view(1, 3, 1, 1)
        assert torch.allclose(cnn(x), cnn(x + shift), atol=1e-5)
        assert not torch.allclose(colour(x), colour(x + 0.3 * shift.sign()), atol=1e-3)
    with pytest.raises(CompactCNNError, match="parts must be one of"):
        GrayHist(10, parts="shape")


def test_both_feature_sets_reach_the_hidden_layer_as_one_concatenation():
    """shape_fc(s) + colour_fc(c) is the linear layer on [s; c]: its two column blocks."""
    torch.manual_seed(0)
    model = create("gray_hist").eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        joined = torch.cat([model.features(model.luminance(x)).flatten(1), model.histogram(x)],
                           1)
        weight = torch.cat([model.shape_fc.weight, model.colour_fc.weight], 1)
        hidden = torch.nn.functional.linear(joined, weight, model.shape_fc.bias)
        assert torch.allclose(model(x), model.out(torch.relu(hidden)), atol=1e-6)


@pytest.mark.parametrize("budget", [1_500, 9_000, 32_170, 65_708, 200_000])
@pytest.mark.parametrize("classes", [2, 9])
def test_widths_for_a_budget(budget, classes):
    widths = widths_for(budget, classes)
    model = GrayHist(classes, widths=widths)
    total = sum(p.numel() for p in model.parameters())
    assert total == parameters_at(widths, classes) <= budget  # a budget is a ceiling
    # Within 1% where widths can land there; a tiny network has coarser steps.
    assert total >= budget * (0.99 if budget > 5000 else 0.97)
    assert widths_for(32_170, 10) == (8, 16, 64)  # the published network at its own size
    with pytest.raises(CompactCNNError, match="gray_hist needs at least"):
        widths_for(200, classes)


def test_synthetic_colour_data_and_the_normalisation_undone_before_binning():
    splits = load_dataset("synthetic-colour", limit=300, test_limit=50)
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 9
    assert len(splits.train) + len(splits.val) == 300 and len(splits.test) == 50
    again = load_dataset("synthetic-colour", limit=300, test_limit=50)
    assert torch.equal(again.train.tensors[0], splits.train.tensors[0])
    model = create("gray_hist", normalisation=(splits.mean, splits.std))
    images = splits.train.tensors[0][:4]
    pixels = (images * torch.tensor(splits.std).view(1, 3, 1, 1)
              + torch.tensor(splits.mean).view(1, 3, 1, 1))
    assert torch.equal(model.histogram(images), ColourHistogram()(pixels))
    assert not torch.equal(model.histogram(images), ColourHistogram()(images))


def test_synthetic_colour_is_fixed_balanced_and_in_range():
    images, labels = synthetic_colour(90, size=16, classes=9, seed=5)
    assert images.shape == (90, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.bincount(labels).tolist() == [10] * 9
    again, _ = synthetic_colour(90, size=16, classes=9, seed=5)
    assert torch.equal(images, again)
    for bad in ({"classes": 1}, {"classes": 19}, {"size": 4}):
        with pytest.raises(CompactCNNError):
            synthetic_colour(10, **bad)


def ridge_accuracy(features: torch.Tensor, targets: torch.Tensor) -> float:
    """Held-out accuracy of a least-squares linear probe trained on the first two thirds."""
    features = torch.cat([features, torch.ones(len(features), 1)], dim=1)
    cut = 2 * len(features) // 3
    onehot = F.one_hot(targets).float()
    a = features[:cut]
    weights = torch.linalg.solve(a.T @ a + 1e-2 * torch.eye(a.shape[1]), a.T @ onehot[:cut])
    return ((features[cut:] @ weights).argmax(1) == targets[cut:]).float().mean().item()


def test_colour_and_shape_each_carry_only_their_part():
    images, labels = synthetic_colour(900, size=32, classes=9, seed=1)
    hue, shape = labels // 3, labels % 3
    colour = ColourHistogram(bins=8, grid=1)(images)  # global: colour without layout
    gray = F.avg_pool2d((images * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True), 4)
    gray = gray.flatten(1)
    assert ridge_accuracy(colour, hue) > 0.95
    assert ridge_accuracy(colour, shape) < 0.45  # chance is 1/3
    assert ridge_accuracy(gray, hue) < 0.45
    assert ridge_accuracy(gray, shape) > 0.55
    both = ridge_accuracy(torch.cat([colour, gray], 1), labels)
    assert both > ridge_accuracy(colour, labels) + 0.15
    assert both > ridge_accuracy(gray, labels) + 0.15


def test_gray_hist_trains_on_a_small_slice():
    torch.manual_seed(0)
    images, labels = synthetic_colour(400, size=32, classes=9, seed=2)
    mean, std = images[:200].mean(dim=(0, 2, 3)), images[:200].std(dim=(0, 2, 3))
    normalised = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    (train_x, test_x), (train_y, test_y) = normalised.split(200), labels.split(200)
    model = GrayHist(9, mean=mean.tolist(), std=std.tolist())
    losses = train_steps(model, train_x, train_y, 120, 3e-3)
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert accuracy > 0.45  # chance is 1/9; colour alone tops out near 1/3


def test_gray_hist_trains_from_an_image_folder(tmp_path):
    """The colour task written as PNG files and read back through ``--data folder:PATH``, as
    a user's own colour images would come."""
    root = write_image_folder(tmp_path / "colour", 720, size=32, classes=9, seed=3)
    assert sorted(p.name for p in root.iterdir()) == [f"c{c}" for c in range(9)]
    assert sum(1 for _ in root.glob("*/*.png")) == 720
    out = tmp_path / "run"
    assert main(["train", "--model", "gray_hist", "--data", f"folder:{root}", "--reg", "none",
                 "--epochs", "8", "--batch-size", "32", "--optimizer", "adam", "--lr", "3e-3",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["input_shape"] == [3, 32, 32]
    assert report["accuracy"] > 0.45  # chance is 1/9; colour alone tops out near 1/3
    with pytest.raises(CompactCNNError, match="already exists"):
        write_image_folder(root, 9)
