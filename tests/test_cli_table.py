"""``compactcnn table``: the paper's numbers on stdout, and one clean line for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compactcnn import models
from compactcnn.cli import main
from compactcnn.files import modelfile as io

ROOT = Path(__file__).resolve().parents[1]
TINY = "tests.fixtures_models:tiny_cnn"
LAYER_KEYS = {"name", "kind", "width", "height", "input", "output", "groups", "params",
              "feature_map"}
MEMORY_KEYS = {"dtype", "batch", "params_bytes", "feature_maps_bytes", "total_bytes"}
CONV5_FC6 = 10 * (3 * 3 * 192 + 1) + 10 * 36 * 4096


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["table", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2, (argv, out, err)
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("compactcnn: error: ") and "Traceback" not in err
    return err


# --- AlexNet: the numbers of Table 1 ---------------------------------------------------------


def test_plain_table_has_the_alexnet_numbers(capsys):
    code, out, err = run(capsys, "alexnet")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "alexnet  input 3x227x227"
    fc6 = next(line.split() for line in lines if line.startswith("fc6"))
    assert fc6[:6] == ["fc6", "linear", "6", "6", "256", "4096"]
    assert fc6[7] == "37,752,832"
    conv2 = next(line.split() for line in lines if line.startswith("conv2"))
    assert conv2[:8] == ["conv2", "conv", "5", "5", "48", "256", "2", "307,456"]
    total = next(line.split() for line in lines if line.startswith("total"))
    assert total[1:3] == ["10,568", "60,965,224"]
    assert lines[-1].startswith("memory footprint (float32, batch 1): parameters 243,860,896 B")


@pytest.fixture(scope="module")
def alexnet_json() -> dict:
    """``--json`` for AlexNet at float16 and batch 8 (run once; building AlexNet takes time)."""
    import contextlib
    import io as stdio

    buffer = stdio.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["table", "alexnet", "--json", "--dtype", "float16", "--batch", "8"]) == 0
    return json.loads(buffer.getvalue())


def test_json_has_exactly_the_documented_keys(alexnet_json):
    doc = alexnet_json
    assert set(doc) == {"model", "input", "layers", "total_params", "memory"}
    assert (doc["model"], doc["input"], doc["total_params"]) == ("alexnet", [3, 227, 227],
                                                                 60_965_224)
    assert all(set(layer) == LAYER_KEYS for layer in doc["layers"])
    assert set(doc["memory"]) == MEMORY_KEYS
    fc6 = doc["layers"][5]
    assert fc6 == {"name": "fc6", "kind": "linear", "width": 6, "height": 6, "input": 256,
                   "output": 4096, "groups": 1, "params": 37_752_832, "feature_map": 4096}
    assert sum(layer["params"] for layer in doc["layers"]) == 60_965_224
    maps = sum(layer["feature_map"] for layer in doc["layers"])
    assert maps == 659_272
    assert doc["memory"] == {"dtype": "float16", "batch": 8, "params_bytes": 60_965_224 * 2,
                             "feature_maps_bytes": maps * 8 * 2,
                             "total_bytes": 60_965_224 * 2 + maps * 8 * 2}


def test_remove_conv5_drops_the_hand_figure(capsys):
    code, out, err = run(capsys, "alexnet", "--remove", "conv5=6", "--remove", "conv5=4",
                         "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["total_params"] == 60_965_224 - CONV5_FC6
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert (layers["conv5"]["output"], layers["fc6"]["input"]) == (246, 246)
    assert (layers["fc6"]["width"], layers["fc6"]["height"]) == (6, 6)
    assert doc["memory"]["params_bytes"] == doc["total_params"] * 4


# --- shapes only, on the meta device ----------------------------------------------------------


def test_table_of_a_huge_input_allocates_nothing(capsys):
    """4e12 pixels, 16 TB as float32: this passes only if nothing real is allocated."""
    code = main(["table", "lenet5", "--input", "1,2000000,2000000", "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["input"] == [1, 2_000_000, 2_000_000]
    assert doc["layers"][0]["feature_map"] == 20 * 1_999_996 ** 2


def test_table_builds_zoo_models_without_storage(capsys, monkeypatch):
    """The model is made on the meta device, so building AlexNet initialises nothing."""
    devices = []
    real = models.create

    def spy(*a, **k):
        model = real(*a, **k)
        devices.append(next(model.parameters()).device)
        return model

    monkeypatch.setattr(models, "create", spy)
    assert main(["table", "alexnet"]) == 0
    assert devices == [torch.device("meta")]
    assert "60,965,224" in capsys.readouterr().out


# --- the other sources: import paths and model files -----------------------------------------


def test_import_path_that_works(capsys):
    code, out, err = run(capsys, TINY, "--input", "1,12,12", "--classes", "7", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["model"] == TINY and doc["input"] == [1, 12, 12]
    rows = [(r["name"], r["kind"], r["width"], r["height"], r["input"], r["output"], r["params"],
             r["feature_map"]) for r in doc["layers"]]
    assert rows == [("0", "conv", 3, 3, 1, 4, 4 * (9 + 1 + 2), 4 * 10 * 10),
                    ("5", "linear", 5, 5, 4, 7, 7 * 101, 7)]
    assert doc["total_params"] == 48 + 707


def test_model_file_that_works(tmp_path, capsys):
    io.save(models.create("lenet5"), tmp_path / "lenet.safetensors")
    code, out, err = run(capsys, str(tmp_path / "lenet.safetensors"), "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert (doc["model"], doc["input"], doc["total_params"]) == ("lenet.safetensors",
                                                                 [1, 28, 28], 431_080)


def test_a_folder_named_like_a_zoo_model_leaves_the_zoo_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lenet5").mkdir()
    (tmp_path / "stuff").mkdir()
    code, out, err = run(capsys, "lenet5")
    assert (code, err) == (0, "") and "431,080" in out
    assert "stuff is a folder, not a model file" in assert_one_line_error(capsys, "stuff")


# --- bad input: exit code 2, one line, no traceback ------------------------------------------


def test_unknown_model_lists_the_valid_ones(capsys):
    err = assert_one_line_error(capsys, "alexnett")
    assert "unknown model 'alexnett'" in err
    assert all(name in err for name in models.names())


@pytest.mark.parametrize("shape", ["3,227", "3,227,227,1", "a,b,c", "3,0,227", "3,-1,5", "3,²,5",
                                   "3,,5"])
def test_malformed_input(capsys, shape):
    assert "malformed --input" in assert_one_line_error(capsys, "lenet5", "--input", shape)


@pytest.mark.parametrize("spec", ["conv1", "conv1=", "=3", "conv1=x", "conv1=-2", "conv1=1.5",
                                  "conv1=²"])
def test_malformed_remove(capsys, spec):
    assert "malformed --remove" in assert_one_line_error(capsys, "lenet5", "--remove", spec)


@pytest.mark.parametrize("argv, message", [
    (["lenet5", "--remove", "conv9=1"], "unknown layer 'conv9'; layers: conv1, conv2, fc3, fc4"),
    (["lenet5", "--remove", "conv1=20"], "cannot remove 20 of the 20 neurons of 'conv1'"),
    (["lenet5", "--remove", "conv1=25"], "cannot remove 25 of the 20 neurons of 'conv1'"),
    (["lenet5", "--remove", "conv1=0"], "cannot remove 0"),
    (["lenet5", "--remove", "fc4=1"], "classifier"),
    (["lenet5", "--input", "1,3,3"], "lenet5 needs input_size >= "),
    (["lenet5", "--input", "1,28,30"], "square"),
    (["lenet5", "--classes", "0"], "num_classes must be a positive integer"),
    (["lenet5", "--batch", "0"], "batch must be >= 1"),
    (["lenet5", "--dtype", "float64"], "invalid choice: 'float64'"),
    (["resnet20", "--remove", "conv1=2", "--remove", "layer1.0.conv2=2"], "coupled"),
])
def test_impossible_requests(capsys, argv, message):
    assert message in assert_one_line_error(capsys, *argv)


def test_files_that_are_not_models(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model\n")
    torch.save(models.create("lenet5").state_dict(), tmp_path / "state.pt")
    torch.save(models.create("lenet5"), tmp_path / "whole.pt")
    save_file({"w": torch.zeros(3)}, tmp_path / "plain.safetensors")
    for name in ["notes.txt", "state.pt", "whole.pt", "plain.safetensors"]:
        err = assert_one_line_error(capsys, str(tmp_path / name))
        assert f"{tmp_path / name} is not a compactcnn model file" in err
    assert "no such model file" in assert_one_line_error(capsys, str(tmp_path / "gone.pt"))


@pytest.mark.parametrize("path, message", [
    ("no_such_module_xyz:build", "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("tests.fixtures_models:missing", "AttributeError"),
    ("tests.fixtures_models:broken", "RuntimeError: cannot build a model for 10 classes"),
    ("math:pi", "TypeError"),
    ("builtins:dict", "returned a dict, not an nn.Module"),
    ("torch.nn:Identity", "no convolution or linear layer"),
])
def test_import_paths_that_fail(capsys, path, message):
    assert message in assert_one_line_error(capsys, path)


def test_import_path_with_the_wrong_input_or_classes(capsys):
    err = assert_one_line_error(capsys, TINY)  # the default 3 x 224 x 224 does not fit
    assert "does not accept input [3, 224, 224]" in err
    err = assert_one_line_error(capsys, "tests.fixtures_models:broken", "--classes", "3")
    assert "cannot build a model for 3 classes" in err


def test_as_a_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "compactcnn.cli", "table", TINY, "--input", "1,12,12"]
    ok = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout.splitlines()[-2].split()[-2] == "1,058"  # the total parameters
    bad = subprocess.run([*command, "--remove", "0=4"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "compactcnn: error: cannot remove 4 of the 4 neurons of '0': " \
        "remove between 1 and 3\n"
