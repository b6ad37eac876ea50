"""End to end through the CLI on a small slice of Fashion-MNIST: files, report, resume, export."""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from compactcnn.accounting.accuracy import evaluate
from compactcnn.cli import main
from compactcnn.data import FASHION_MNIST_DIR, load_dataset
from compactcnn.errors import CompactCNNError
from compactcnn.files import checkpoint as checkpoint_file
from compactcnn.files import modelfile as io
from compactcnn.run.config import TrainConfig
from compactcnn.run.session import resume
from tests.cli_helpers import assert_resume_equals_whole

pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                reason="Debian's dataset-fashion-mnist is not installed")

SLICE = ["--model", "lenet5", "--data", "fashion-mnist", "--limit", "2000", "--test-limit",
         "500", "--batch-size", "64", "--seed", "3"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *SLICE, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "lenet5"
    assert train(out, "--epochs", "1", "--lam", "3e-2", "--finetune-epochs", "1") == 0
    return out


def test_run_writes_every_file(run_dir: Path) -> None:
    for name in ("checkpoint.safetensors", "sparse.safetensors", "model.safetensors",
                 "report.json", "report.md", "neurons.png", "live.png", "curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"


def test_report_agrees_with_the_compact_model(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("model", "data", "reg", "lam", "epochs", "accuracy", "dense", "compact",
                "layers", "max_abs_output_diff", "train_seconds"):
        assert key in report
    for side in ("dense", "compact"):
        assert {"params", "memory_bytes", "flops"} <= report[side].keys()
    assert report["machine"] == {"torch": torch.__version__, "device": "cpu",
                                 "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    model = io.load(run_dir / "model.safetensors")
    assert report["compact"]["params"] == sum(p.numel() for p in model.parameters())
    widths = {n: m.out_channels if hasattr(m, "out_channels") else m.out_features
              for n, m in model.named_modules() if hasattr(m, "weight") and m.weight.dim() > 1}
    for layer in report["layers"]:
        assert widths[layer["name"]] == layer["neurons_after"]
    assert report["compact"]["params"] < report["dense"]["params"], "lam 3e-2 kills neurons"
    assert report["max_abs_output_diff"] <= 1e-5
    splits = load_dataset("fashion-mnist", limit=2000, test_limit=500, seed=3)
    assert evaluate(model, splits.test)[1] == pytest.approx(report["accuracy"], abs=1e-9)


def test_report_command_prints_json_and_table(run_dir: Path, capsys) -> None:
    assert main(["report", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "lenet5"
    assert main(["report", str(run_dir)]) == 0
    assert "parameters" in capsys.readouterr().out


def test_onnx_export_matches_pytorch(run_dir: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--onnx", str(out), "--torchscript",
                 str(tmp_path / "m.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["onnx"]["max_abs_diff"] <= 1e-4
    assert result["onnx"]["exporter"] == "dynamo" and result["onnx"]["passed_over"] == ""
    assert result["torchscript"]["max_abs_diff"] <= 1e-5
    assert out.stat().st_size > 0


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, monkeypatch, capsys) -> None:
    assert_resume_equals_whole(train, tmp_path, monkeypatch, capsys, "--epochs", "2",
                               "--lam", "2e-3")


def _one_line_exit_2(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_inputs_get_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    corrupt = tmp_path / "fmnist"
    shutil.copytree(FASHION_MNIST_DIR, corrupt)
    data = (corrupt / "train-images-idx3-ubyte.gz").read_bytes()
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(gzip.decompress(data)[:5000]))
    err = _one_line_exit_2(capsys, ["train", *SLICE, "--data-dir", str(corrupt),
                                    "--out", str(tmp_path / "a")])
    assert "corrupt" in err

    from PIL import Image
    folder = tmp_path / "tiny"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), color=i * 40).save(folder / cls / f"{i}.png")
    err = _one_line_exit_2(capsys, ["train", "--model", "lenet5", "--data", f"folder:{folder}",
                                    "--out", str(tmp_path / "b")])
    assert "input_size" in err

    (tmp_path / "empty" / "cls").mkdir(parents=True)
    _one_line_exit_2(capsys, ["train", "--data", f"folder:{tmp_path / 'empty'}",
                              "--out", str(tmp_path / "c")])

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _one_line_exit_2(capsys, ["train", "--data", "synthetic", "--out", str(blocker / "run")])
    _one_line_exit_2(capsys, ["train", "--data", "synthetic", "--out", str(tmp_path / "d"),
                              "--resume"])
    _one_line_exit_2(capsys, ["train", "--data", "synthetic", "--lam", "-1",
                              "--out", str(tmp_path / "e")])


def test_a_checkpoint_written_before_an_option_existed_resumes_as_it_ran(run_dir: Path,
                                                                          tmp_path: Path) -> None:
    """A checkpoint from before ``--reweight`` has no such key: it ran plain group lasso, so
    it resumes under reweight 0 and is refused, naming both values, under the new default."""
    state = checkpoint_file.load(run_dir / "checkpoint.safetensors")
    del state["config"]["reweight"]
    old = tmp_path / "checkpoint.safetensors"
    checkpoint_file.save(old, state)
    as_it_ran = TrainConfig(**{**state["config"], "reweight": 0.0})
    assert resume(as_it_ran, old).epoch == state["epoch"]
    with pytest.raises(CompactCNNError, match=r"reweight \(0\.0 in the recorded run, "
                                             r"1\.0 now\)"):
        resume(replace(as_it_ran, reweight=1.0), old)


def test_resume_with_another_config_is_refused_and_keeps_the_checkpoint(run_dir: Path,
                                                                        capsys) -> None:
    ckpt = run_dir / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    err = _one_line_exit_2(capsys, ["train", *SLICE, "--epochs", "1", "--lam", "1e-4",
                                    "--finetune-epochs", "1", "--out", str(run_dir),
                                    "--resume"])
    assert "lam" in err
    _one_line_exit_2(capsys, ["train", *SLICE, "--epochs", "1", "--out", str(run_dir)])
    assert ckpt.read_bytes() == before
