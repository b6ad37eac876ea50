"""Model files: exact round trips of compacted models, refusal of everything else, atomic writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

from compactcnn import models
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile as io
from compactcnn.files.atomic import atomic_write
from compactcnn.sparsity import neuron_groups
from compactcnn.surgery import compact

SRC = Path(__file__).resolve().parents[1] / "src"


def kill(model: nn.Module, example: torch.Tensor, fraction: float, seed: int = 0) -> None:
    """Zero random neurons, every scalar of each one's group, as the proximal optimizer does."""
    g = torch.Generator().manual_seed(seed)
    for group in neuron_groups(model, example):
        matrix = group.matrix()
        matrix[torch.rand(group.size, generator=g) < fraction] = 0.0
        group.write(matrix)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def compacted() -> nn.Module:
    """A ResNet-20 whose widths match no constructor default, and a bias created by a fold.

    No zoo model has a bias-free layer that a fold can reach (ResNet's bias-free 1x1 shortcut
    shares its input with a zero-padded convolution, so constants there are kept), so the
    folded bias is added here the way ``compaction._fold`` adds one.
    """
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, input_size=8)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 1.5)
    kill(model, torch.randn(1, 3, 8, 8), 0.4)
    small, report = compact(model, torch.randn(2, 3, 8, 8))
    assert report.after.total_params < report.before.total_params
    shortcut = small.layer2[0].downsample[0]
    assert shortcut.bias is None
    shortcut.bias = nn.Parameter(torch.randn(shortcut.out_channels))
    return small.eval()


def test_a_compacted_model_round_trips_exactly(compacted, tmp_path):
    path = tmp_path / "small.safetensors"
    io.save(compacted, path, extra={"note": "compacted"})
    assert [p.name for p in tmp_path.iterdir()] == ["small.safetensors"]
    meta, tensors = io.read(path)
    assert meta["extra"] == {"note": "compacted"}
    assert meta["spec"] == io.spec_of(compacted)
    assert "layer2.0.downsample.0.bias" in tensors

    loaded = io.load(path)
    assert not loaded.training
    assert loaded.state_dict().keys() == compacted.state_dict().keys()
    for k, v in compacted.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    for name, m in compacted.named_modules():
        if isinstance(m, nn.Conv2d):
            twin = loaded.get_submodule(name)
            assert (twin.in_channels, twin.out_channels, twin.groups) == \
                (m.in_channels, m.out_channels, m.groups)
    assert loaded.layer2[0].downsample[0].bias is not None
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(outputs(loaded, x), outputs(compacted, x))
    # And again: a loaded model saves to a file that loads to the same model.
    io.save(loaded, tmp_path / "again.safetensors")
    assert torch.equal(outputs(io.load(tmp_path / "again.safetensors"), x), outputs(loaded, x))


def test_only_zoo_models_can_be_saved(tmp_path):
    with pytest.raises(CompactCNNError, match="models.create"):
        io.save(nn.Linear(2, 2), tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


# --- loading never unpickles -------------------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".pth"])
def test_a_pickle_is_refused_and_never_runs(tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"model{suffix}"
    torch.save({"state_dict": Payload(marker)}, evil)
    with pytest.raises(CompactCNNError, match="not a compactcnn model file"):
        io.load(evil)
    with pytest.raises(CompactCNNError, match="not a compactcnn model file"):
        io.read(evil)
    assert not marker.exists()

    # The payload is live: an unpickling loader does run it.
    live = tmp_path / "live.pt"
    live.write_bytes(evil.read_bytes())
    torch.load(live, weights_only=False)
    assert marker.exists()


def test_no_loader_under_src_unpickles():
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        assert "pickle.load" not in text, path
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 1, m.end()
            while depth and end < len(text):  # the whole call, across lines
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            call = text[m.start():end]
            calls.append(call)
            assert re.search(r"weights_only\s*=\s*True", call), f"{path}: {call}"
    assert all("weights_only=False" not in c for c in calls)


# --- anything that is not our model file -------------------------------------------------------


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def good_bytes() -> bytes:
    return io.encode(models.create("lenet5", num_classes=10, input_size=16))


def test_a_truncated_file_is_refused(tmp_path, good_bytes):
    for n in (0, 4, 8, 100, len(good_bytes) // 2, len(good_bytes) - 1):
        path = _file(tmp_path, f"cut{n}.safetensors", good_bytes[:n])
        with pytest.raises(CompactCNNError, match="not a compactcnn model file"):
            io.load(path)


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    tensors = {"w": torch.zeros(2, 2)}
    for name, meta in [("none", None), ("other", {"format": "pt"}),
                       ("old", {"format": "compactcnn.model/0"})]:
        path = _file(tmp_path, f"{name}.safetensors", st_save(tensors, metadata=meta))
        with pytest.raises(CompactCNNError, match="not a compactcnn model file"):
            io.load(path)


def test_text_folders_and_missing_files_are_refused(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("just some notes\n")
    with pytest.raises(CompactCNNError, match="not a compactcnn model file"):
        io.load(text)
    with pytest.raises(CompactCNNError, match="no such model file"):
        io.load(tmp_path / "missing.safetensors")
    with pytest.raises(CompactCNNError, match="no such model file"):
        io.load(tmp_path)


def _with(model: nn.Module, tensors: dict | None = None, **meta) -> bytes:
    tensors = tensors or {k: v.clone() for k, v in model.state_dict().items()}
    base = {"format": io.FORMAT, "spec": json.dumps(io.spec_of(model)),
            "widths": json.dumps(io._widths(model)), "extra": "{}"}
    return st_save(tensors, metadata=base | meta)


@pytest.mark.parametrize("meta", [
    {"spec": "[1, 2]"}, {"spec": '"lenet5"'}, {"spec": "{not json"}, {"spec": '{"name": "x"}'},
    {"spec": '{"name": "lenet5", "num_classes": -1, "in_channels": 1, "input_size": 16}'},
    {"spec": '{"name": "lenet5", "evil": 1}'}, {"widths": "[1]"},
    {"widths": '{"nope": {"out": 3}}'}, {"widths": '{"fc4": {"in": "a", "out": 10}}'},
    {"widths": '{"fc3": {"in": 50, "out": 499}}'},  # disagrees with the tensors
    {"widths": '{"conv1": {"in": 1, "out": 20, "groups": 0}}'},
])
def test_corrupt_metadata_is_refused(tmp_path, meta):
    model = models.create("lenet5", num_classes=10, input_size=16)
    path = _file(tmp_path, "bad.safetensors", _with(model, **meta))
    with pytest.raises(CompactCNNError, match="bad.safetensors"):
        io.load(path)


def test_tensors_that_disagree_with_the_model_are_refused(tmp_path):
    model = models.create("lenet5", num_classes=10, input_size=16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, tensors in [("shape", state | {"fc4.weight": torch.zeros(10, 7)}),
                          ("extra", state | {"fc4.evil": torch.zeros(1)}),
                          ("missing", {k: v for k, v in state.items() if k != "fc3.bias"})]:
        path = _file(tmp_path, f"{name}.safetensors", _with(model, tensors))
        with pytest.raises(CompactCNNError, match="does not describe a valid model"):
            io.load(path)


# --- atomic writes -----------------------------------------------------------------------------


def test_atomic_write_leaves_only_the_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize("where", ["replace", "fsync", "write"])
def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch, where):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old contents")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if where == "write":
        class Half:
            """A file object that writes half of the data, then fails."""

            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                boom()

        real = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Half(real(fd, mode)))
    else:
        monkeypatch.setattr(os, where, boom)
    with pytest.raises(CompactCNNError, match="cannot write .*No space left"):
        atomic_write(target, b"new contents, much longer than the old ones")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_an_interrupted_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        io.save(models.create("lenet5", num_classes=10, input_size=16), target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_writing_into_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CompactCNNError, match="cannot write"):
        atomic_write(tmp_path / "no" / "such" / "file.bin", b"x")
