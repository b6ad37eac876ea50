"""``train --model FILE``: a run that starts from a model file's architecture and weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compactcnn import models
from compactcnn.cli import main
from compactcnn.data import load_dataset
from compactcnn.files import modelfile
from compactcnn.methods.selection import kill
from compactcnn.sources import for_training
from compactcnn.sparsity import neuron_groups
from compactcnn.surgery import compact
from tests.cli_helpers import one_line_error

SLICE = ["--data", "synthetic", "--limit", "256", "--test-limit", "64", "--batch-size", "64",
         "--seed", "1"]


@pytest.fixture(scope="module")
def narrowed(tmp_path_factory) -> Path:
    """A lenet5 with a third of conv2 and fc3 removed, saved as a model file."""
    torch.manual_seed(3)
    model = models.create("lenet5").eval()
    groups = neuron_groups(model, (1, 28, 28))
    kill(groups, [torch.arange(g.size) % 3 == 0 for g in groups])
    small, _ = compact(model, (1, 28, 28))
    path = tmp_path_factory.mktemp("file") / "model.safetensors"
    modelfile.save(small, path)
    return path


def test_a_model_file_trains_from_its_own_widths_and_weights(narrowed):
    splits = load_dataset("synthetic", limit=256, test_limit=64, seed=1)
    model = for_training(str(narrowed), splits)
    _, tensors = modelfile.read(narrowed)
    assert model.training
    state = model.state_dict()
    assert state.keys() >= tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name
    assert model.conv2.out_channels == 33 and model.fc3.out_features == 333


def test_train_prunes_a_model_file_further(narrowed, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", str(narrowed), *SLICE, "--epochs", "2", "--method",
                 "group", "--target", "params=0.5", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    start = sum(t.numel() for t in modelfile.read(narrowed)[1].values()
                if t.is_floating_point())
    assert report["model"] == str(narrowed)
    assert report["dense"]["params"] == start  # the file's model is where the budget starts
    assert report["compact"]["params"] <= 0.5 * start
    widths = {layer["name"]: layer["neurons_before"] for layer in report["layers"]}
    assert widths["conv2"] == 33 and widths["fc3"] == 333


def test_a_model_file_for_other_images_is_one_line(narrowed, capsys, tmp_path):
    err = one_line_error(capsys, "train", "--model", str(narrowed), "--data", "synthetic-colour",
                         "--limit", "64", "--out", str(tmp_path / "run"))
    assert "was made for 1,28,28 images; the data have 3,32,32" in err
    out = tmp_path / "run"
    assert not out.exists() or not any(out.iterdir()), "nothing is written"


def test_a_missing_model_file_is_one_line(capsys, tmp_path):
    err = one_line_error(capsys, "train", "--model", str(tmp_path / "none.safetensors"), *SLICE,
                         "--out", str(tmp_path / "run"))
    assert "none.safetensors" in err
