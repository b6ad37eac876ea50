"""A model from the user's own code (``--model package.module:callable``) in ``train``,
``compare`` and ``compact``: checked like a zoo model, saved and loaded like one, resumed."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from compactcnn.accounting.accuracy import evaluate
from compactcnn.cli import main
from compactcnn.data import load_dataset
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile as io
from compactcnn.sources import for_training
from tests.cli_helpers import assert_resume_equals_whole, one_line_error

USER = "tests.user_models"
SMALL = f"{USER}:small_cnn"
# A few seconds on one thread: 1 x 28 x 28 synthetic images, 10 classes.
SLICE = ["--data", "synthetic", "--limit", "256", "--test-limit", "64", "--batch-size", "64",
         "--seed", "1"]


def train(out: Path, *extra: str, model: str = SMALL) -> int:
    return main(["train", "--model", model, *SLICE, "--out", str(out), *extra])


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# --- train: end to end, with compaction, and the files load back -------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A budgeted run, so that compaction certainly removes neurons; --input as the data's."""
    out = tmp_path_factory.mktemp("user") / "run"
    assert train(out, "--input", "1,28,28", "--epochs", "2", "--method", "group",
                 "--target", "params=0.4") == 0
    return out


def test_train_compacts_a_model_from_an_import_path(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    assert report["model"] == SMALL and report["input_shape"] == [1, 28, 28]
    after = {layer["name"]: layer["neurons_after"] for layer in report["layers"]}
    before = {layer["name"]: layer["neurons_before"] for layer in report["layers"]}
    assert before == {"features.0": 6, "features.4": 8, "hidden": 16, "classifier": 10}
    assert after != before and after["classifier"] == 10
    assert report["compact"]["params"] <= 0.4 * report["dense"]["params"]


def test_the_run_files_record_the_import_path_and_load_back_equal(run_dir, tmp_path):
    report = json.loads((run_dir / "report.json").read_text())
    meta, _ = io.read(run_dir / "model.safetensors")
    assert meta["spec"] == {"import": SMALL, "kwargs": {"num_classes": 10},
                            "input": [1, 28, 28]}
    small = io.load(run_dir / "model.safetensors")
    assert type(small).__name__ == "SmallCNN"
    widths = {"features.0": small.features[0].out_channels,
              "features.4": small.features[4].out_channels,
              "hidden": small.hidden.out_features, "classifier": small.classifier.out_features}
    assert widths == {layer["name"]: layer["neurons_after"] for layer in report["layers"]}
    assert sum(p.numel() for p in small.parameters()) == report["compact"]["params"]
    splits = load_dataset("synthetic", limit=256, test_limit=64, seed=1)
    assert evaluate(small, splits.test)[1] == pytest.approx(report["accuracy"], abs=1e-9)
    # Saved again, the loaded model is the same file, tensors and metadata alike.
    io.save(small, tmp_path / "again.safetensors")
    (meta_again, again), (_, first) = (io.read(tmp_path / "again.safetensors"),
                                       io.read(run_dir / "model.safetensors"))
    assert meta_again == meta and again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k]) for k in first)
    sparse = io.load(run_dir / "sparse.safetensors")
    assert sparse.hidden.out_features == 16, "the sparse model keeps its dead neurons"


def test_a_callable_without_num_classes_is_called_bare_and_checked(tmp_path):
    splits = load_dataset("synthetic", limit=64, test_limit=16)
    model = for_training(f"{USER}:ten_classes", splits)
    assert model.training and io.spec_of(model)["kwargs"] == {}
    io.save(model, tmp_path / "ten.safetensors")
    x = splits.test[:4][0]
    assert torch.equal(outputs(io.load(tmp_path / "ten.safetensors"), x), outputs(model, x))
    with pytest.raises(CompactCNNError, match=r"gives \[1, 7\] .* 10 classes need \[1, 10\]"):
        for_training(f"{USER}:seven_classes", splits)


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, capsys):
    assert_resume_equals_whole(train, tmp_path, monkeypatch, capsys, "--epochs", "2",
                               "--lam", "2e-2")


# --- compact and compare -------------------------------------------------------------------------


def test_compact_an_import_path(tmp_path, capsys):
    from tests.user_models import half_dead

    out = tmp_path / "small.safetensors"
    torch.manual_seed(0)  # the command builds the model first: the same seed, the same model
    assert main(["compact", f"{USER}:half_dead", "--input", "1,28,28", "--classes", "10",
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out) and report["max_abs_output_diff"] <= 1e-5
    small = io.load(out)
    assert small.hidden.out_features == 8 and small.classifier.in_features == 8
    assert io.read(out)[0]["spec"] == {"import": f"{USER}:half_dead",
                                       "kwargs": {"num_classes": 10}, "input": [1, 28, 28]}
    torch.manual_seed(0)
    dense = half_dead()
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(outputs(small, x), outputs(dense, x), rtol=0, atol=1e-5)


def test_compare_with_an_import_path(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--model", SMALL, *SLICE, "--epochs", "1", "--target",
                 "params=0.5", "--methods", "uniform", "--input", "1,28,28", "--out",
                 str(out), "--json"]) == 0
    result = json.loads((out / "compare.json").read_text())
    captured = capsys.readouterr()
    assert json.loads(captured.out) == result  # stdout holds the result alone
    assert "epoch 1/1" in captured.err  # progress goes to stderr
    assert result["model"] == SMALL
    rows = {row["method"]: row for row in result["rows"]}
    assert rows.keys() == {"dense", "uniform"}
    assert all("accuracy" in row and "skipped" not in row for row in rows.values())
    assert rows["uniform"]["params"] <= 0.5 * rows["dense"]["params"]
    assert f"--model {SMALL}" in rows["uniform"]["command"]
    assert "--input 1,28,28" in rows["uniform"]["command"]
    assert io.load(out / "uniform" / "model.safetensors").hidden.out_features \
        == rows["uniform"]["widths"]["hidden"]


# --- bad input: one line, exit 2, nothing written ------------------------------------------------


BAD = [
    ("no_such_module_xyz:net", "ModuleNotFoundError: No module named 'no_such_module_xyz' "
                               "(install it, or add its folder to PYTHONPATH)"),
    (f"{USER}:missing", "AttributeError"),
    (f"{USER}:NOT_CALLABLE", "TypeError: 'int' object is not callable"),
    (f"{USER}:broken", "RuntimeError: this factory is broken"),
    (f"{USER}:not_a_module", "returned a dict, not an nn.Module"),
    (f"{USER}:for_rgb", "does not accept input [1, 28, 28]: RuntimeError"),
    (f"{USER}:seven_classes", "gives [1, 7] for one input [1, 28, 28]; 10 classes need [1, 10]"),
    (f"{USER}:two_outputs", "gives a tuple for one input [1, 28, 28]"),
    (f"{USER}:no_parameters", "has no parameters to train"),
    ("torch.nn:Identity", "gives [1, 1, 28, 28]"),
]


@pytest.mark.parametrize("model, message", BAD)
def test_train_refuses_a_bad_import_path_and_writes_nothing(tmp_path, capsys, model, message):
    out = tmp_path / "run"
    err = one_line_error(capsys, "train", "--model", model, *SLICE, "--out", str(out))
    assert message in err
    assert not out.exists() or not any(out.iterdir()), "nothing is written"


@pytest.mark.parametrize("declared, message", [
    ("3,28,28", "--input 3,28,28 does not match the data: synthetic has 1,28,28 images"),
    ("1,28", "malformed --input '1,28'"),
])
def test_train_refuses_an_input_other_than_the_datas(tmp_path, capsys, declared, message):
    out = tmp_path / "run"
    assert message in one_line_error(capsys, "train", "--model", SMALL, *SLICE, "--input",
                                     declared, "--out", str(out))
    assert not out.exists() or not any(out.iterdir())


def test_compare_refuses_a_bad_import_path(tmp_path, capsys):
    err = one_line_error(capsys, "compare", "--model", f"{USER}:broken", *SLICE, "--target",
                         "params=0.5", "--methods", "uniform", "--out", str(tmp_path / "c"))
    assert "cannot build a model from 'tests.user_models:broken'" in err
    assert not any(p.is_file() for p in (tmp_path / "c").rglob("*"))


@pytest.mark.parametrize("model, message", [m for m in BAD if "need" not in m[1]
                                            and "train" not in m[1] and "[1, 1, 28" not in m[1]])
def test_compact_refuses_a_bad_import_path_and_keeps_the_old_file(tmp_path, capsys, model,
                                                                  message):
    out = tmp_path / "small.safetensors"
    out.write_bytes(b"the old file")
    assert message in one_line_error(capsys, "compact", model, "--input", "1,28,28",
                                     "--out", str(out), "--force")
    assert out.read_bytes() == b"the old file"


def test_table_checks_the_classes_of_a_callable_without_num_classes(capsys):
    assert main(["table", f"{USER}:ten_classes", "--input", "1,28,28", "--classes", "10"]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, "table", f"{USER}:ten_classes", "--input", "1,28,28",
                         "--classes", "7")
    assert "gives [1, 10] for one input [1, 28, 28]; 7 classes need [1, 7]" in err


# --- model files that name an import path -------------------------------------------------------


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """A module of the user's, importable from ``tmp_path`` as ``compactcnn_user_net``; its
    import leaves a file behind, the proof that it ran."""
    name = "compactcnn_user_net"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_name('imported').touch()\n"
        "from tests.user_models import small_cnn as net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_model_file_whose_module_is_gone_names_the_import_path(tmp_path, capsys, own_module):
    saved = tmp_path / "net.safetensors"
    assert main(["compact", f"{own_module}:net", "--input", "1,28,28", "--out",
                 str(saved)]) == 0
    capsys.readouterr()
    (tmp_path / f"{own_module}.py").unlink()
    del sys.modules[own_module]
    importlib.invalidate_caches()  # the finder's listing of tmp_path may predate the unlink
    err = one_line_error(capsys, "table", str(saved))
    assert (f"{saved} was saved from an import path: cannot build a model from "
            f"'{own_module}:net': ModuleNotFoundError: No module named '{own_module}'") in err


def _file_naming(tmp_path: Path, spec: dict) -> Path:
    model = for_training(SMALL, load_dataset("synthetic", limit=64, test_limit=16))
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(st_save({k: v.contiguous() for k, v in model.state_dict().items()},
                             metadata={"format": io.FORMAT, "spec": json.dumps(spec),
                                       "widths": json.dumps(io._widths(model)), "extra": "{}"}))
    return path


@pytest.mark.parametrize("spec, message", [
    ({"kwargs": {"num_classes": 10, "shell": True}}, "the kwargs may only be"),
    ({"kwargs": {"num_classes": "10"}}, "the kwargs may only be"),
    ({"input": [1, 28]}, "the input must be three positive integers"),
    ({"evil": 1}, "an import spec has the keys import, kwargs and input"),
])
def test_a_model_file_cannot_choose_what_its_import_runs(tmp_path, own_module, spec, message):
    good = {"import": f"{own_module}:net", "kwargs": {"num_classes": 10}, "input": [1, 28, 28]}
    assert io.load(_file_naming(tmp_path, good)).classifier.out_features == 10
    (tmp_path / "imported").unlink()
    del sys.modules[own_module]
    with pytest.raises(CompactCNNError, match=message):
        io.load(_file_naming(tmp_path, good | spec))
    assert not (tmp_path / "imported").exists(), "refused before the module was imported"


@pytest.mark.parametrize("source", ["os:getcwd", "pdb:set_trace", "subprocess:Popen"])
def test_a_model_file_never_imports_the_standard_library(tmp_path, source):
    path = _file_naming(tmp_path, {"import": source, "kwargs": {}, "input": [1, 28, 28]})
    with pytest.raises(CompactCNNError, match="is in the standard library"):
        io.load(path)


def test_a_run_from_an_import_path_quantises_to_int8(run_dir, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(run_dir), "--int8", "--calibration", "64", "--out", str(out),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.stat().st_size == result["file_bytes"]["int8_onnx"]
    assert result["param_bytes"]["int8"] * 4 == result["param_bytes"]["float32"]
