"""``quantize`` and ``binarize`` on a tiny finished run: what they write, what they report, and
one line for each bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")

from compactcnn.cli import main  # noqa: E402
from compactcnn.deploy.binary import PackedBinaryModel  # noqa: E402
from compactcnn.deploy.binaryfile import load_binary  # noqa: E402
from compactcnn.run.config import TrainConfig  # noqa: E402
from compactcnn.run.pipeline import run  # noqa: E402
from compactcnn.run.rundir import MODEL  # noqa: E402
from tests.cli_helpers import one_line_error

TEST_IMAGES = 128


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 trained well enough on synthetic data that its logits have margins to keep."""
    out = tmp_path_factory.mktemp("deploy") / "run"
    cfg = TrainConfig(model="lenet5", data="synthetic", limit=512, test_limit=TEST_IMAGES,
                      epochs=2, batch_size=32)
    run(cfg, out)
    return out


def run_json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_int8_agrees_with_float_in_a_smaller_file(run_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.int8.onnx"
    r = run_json(capsys, "quantize", str(run_dir), "--int8", "--calibration", "256",
                 "--out", str(out))
    assert out.stat().st_size == r["file_bytes"]["int8_onnx"] < r["file_bytes"]["float_onnx"]
    assert r["test_images"] == TEST_IMAGES and r["calibration_images"] == 256
    assert r["agreement"] >= 0.98
    assert r["param_bytes"]["int8"] * 4 == r["param_bytes"]["float32"]
    layers = {row["name"]: row for row in r["footprint"]["layers"]}
    assert list(layers) == ["conv1", "conv2", "fc3", "fc4"]
    assert layers["conv1"]["params_bytes"] == 20 * (5 * 5 + 1)  # one byte each
    assert layers["conv1"]["feature_map_bytes"] == 20 * 24 * 24 * 4  # float32
    assert set(r["latency_ms"]["int8_onnx"]) == {"batch_1", "batch_64"}


def test_the_packed_binary_model_computes_what_torch_does(run_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.binary.safetensors"
    r = run_json(capsys, "binarize", str(run_dir), "--epochs", "1", "--binary-activations",
                 "--out", str(out))
    assert r["binary_layers"] == {"conv2": True, "fc3": True}  # first and last stay float
    assert r["max_abs_diff_packed_vs_torch"] == 0.0
    model = load_binary(out)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(PackedBinaryModel(model)(x), model(x))
    layers = {row["name"]: row for row in r["footprint"]["layers"]}
    # fc3: 400,000 weights at one bit, and a float32 scale and bias for each of 500 neurons
    assert layers["fc3"]["params_bytes"] == 400_000 // 8 + 500 * 2 * 4
    assert layers["fc4"]["precision"] == "float32" and layers["fc4"]["params_bytes"] == 5010 * 4
    assert r["param_bytes"]["binary"] == r["footprint"]["params_bytes"]


def test_the_report_for_people_names_the_file_and_the_out_is_never_clobbered(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(run_dir), "--int8", "--calibration", "64",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "predictions agree on" in text and f"wrote {out}" in text
    before = out.read_bytes()
    err = one_line_error(capsys, "quantize", str(run_dir), "--int8", "--out", str(out))
    assert "--force" in err
    err = one_line_error(capsys, "binarize", str(run_dir), "--epochs", "0", "--out", str(out))
    assert "--force" in err
    assert out.read_bytes() == before


def test_bad_sources_get_one_line(run_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    bare = tmp_path / "bare.safetensors"
    shutil.copy(run_dir / MODEL, bare)
    err = one_line_error(capsys, "quantize", str(bare), "--int8", "--out", str(tmp_path / "a"))
    assert "--data" in err and "not a run folder" in err
    garbage = tmp_path / "notes.safetensors"
    garbage.write_text("not a model")
    err = one_line_error(capsys, "binarize", str(garbage), "--data", "synthetic", "--epochs", "0",
                         "--out", str(tmp_path / "b"))
    assert "is not a compactcnn model file" in err
    err = one_line_error(capsys, "quantize", str(run_dir), "--out", str(tmp_path / "c"))
    assert "--int8" in err
    assert not any((tmp_path / n).exists() for n in "abc")
