"""Compact by design in the shared harness: filtermap and gray_hist reach their budgets, save the
network they trained, and are refused in one line where they do not apply."""

from __future__ import annotations

import math

import pytest

from compactcnn.accounting import neuron_table
from compactcnn.cli import main
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile
from compactcnn.layers.filtermap import FilterMap
from compactcnn.run.compare import compare
from compactcnn.run.config import TrainConfig
from compactcnn.run.pipeline import run

SLICE = dict(limit=256, test_limit=128, epochs=1, batch_size=64, lr_warmup_epochs=0.5)


@pytest.mark.parametrize(("method", "model", "data", "target"), [
    ("filtermap", "lenet5", "synthetic", 0.10),
    ("filtermap", "lenet5", "synthetic", 0.05),
    ("filtermap", "vgg_small", "synthetic", 0.05),
    ("gray_hist", "lenet5", "synthetic-colour", 0.05),
    ("gray_hist", "vgg_small", "synthetic-colour", 0.02),
])
def test_the_designed_network_meets_its_budget_and_is_the_one_saved(method, model, data,
                                                                     target, tmp_path):
    cfg = TrainConfig(model=model, data=data, method=method, target=f"params={target}", **SLICE)
    result = run(cfg, tmp_path)
    reached = result["budget"]["reached"]["params"]
    assert reached == pytest.approx(target, rel=0.02)
    saved = modelfile.load(tmp_path / "model.safetensors")
    shape = tuple(result["input_shape"])
    # The parameters stored and learned: a filter map counts its map.
    assert result["compact"]["params"] == sum(p.numel() for p in saved.parameters())
    assert result["compact"]["params"] == neuron_table(saved, shape).total_params
    assert result["compact"]["params"] == round(reached * result["dense"]["params"])
    dense = modelfile.load(tmp_path / "sparse.safetensors")
    assert result["dense"]["params"] == neuron_table(dense, shape).total_params
    assert saved.compactcnn_spec["name"] == (f"{model}_filtermap" if method == "filtermap"
                                             else "gray_hist")
    assert any(isinstance(m, FilterMap) for m in saved.modules()) == (method == "filtermap")
    assert math.isnan(result["max_abs_output_diff"])  # nothing was compacted
    assert result["method"] == method and result["history"][0]["epoch"] == 1
    if method == "filtermap":  # the dense model's widths: the maps shrink its weights only
        assert all(r["neurons_before"] == r["neurons_after"] for r in result["layers"])
        assert result["budget"]["reached"]["flops"] == 1.0
    else:  # its own layers, beside the dense model's in the report
        report = (tmp_path / "report.md").read_text()
        assert "| shape_fc | 4 | 4 | - → " in report


@pytest.mark.parametrize(("argv", "words"), [
    (["--model", "lenet5", "--data", "synthetic", "--method", "gray_hist", "--target",
      "params=0.05"], "gray_hist does not apply to synthetic: it needs colour images "
                      "(3 channels), these have 1"),
    (["--model", "mlp", "--data", "synthetic", "--method", "filtermap", "--target",
      "params=0.05"], "filtermap does not apply to this model: the zoo has no filter-map "
                      "variant of mlp (it has one of: lenet5, vgg_small)"),
    (["--model", "lenet5", "--data", "synthetic", "--method", "filtermap", "--target",
      "params=0.1,flops=0.5"], "filtermap is sized by its parameters: give the target as "
                               "params=F only"),
    (["--model", "lenet5", "--data", "synthetic", "--method", "filtermap", "--target",
      "params=0.001"], "fraction 0.001 is below the smallest filter-map model, 0.0205 of the "
                       "dense one"),
    (["--model", "lenet5", "--data", "synthetic-colour", "--method", "gray_hist", "--target",
      "params=0.0001"], "gray_hist needs at least"),
    (["--model", "lenet5_filtermap", "--data", "synthetic", "--method", "group", "--target",
      "params=0.1"], "'conv2' is a filter-map layer: its filters share weights, so it has no "
                     "neurons to group or remove (train it with --reg none"),
    (["--model", "lenet5_filtermap", "--data", "synthetic"], "'conv2' is a filter-map layer"),
])
def test_where_a_method_does_not_apply_one_line_and_exit_2(argv, words, tmp_path, capsys):
    code = main(["train", *argv, "--limit", "64", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()  # refused before training


def test_compare_has_a_row_for_each_and_says_where_one_does_not_apply(tmp_path):
    base = TrainConfig(model="lenet5", data="synthetic", target="params=0.1", **SLICE)
    result = compare(base, tmp_path, ("filtermap", "gray_hist"))
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "filtermap", "gray_hist"}
    assert rows["gray_hist"]["skipped"].startswith("gray_hist does not apply to synthetic")
    fm = rows["filtermap"]
    assert fm["params"] == pytest.approx(0.1 * fm["dense_params"], rel=0.02)
    assert fm["flops"] == fm["dense_flops"]
    assert "--method filtermap" in fm["command"]
    md = (tmp_path / "compare.md").read_text()
    assert "| gray_hist | not run: gray_hist does not apply" in md


def test_a_zoo_filter_map_model_trains_as_it_is_and_compacts_into_a_plain_one(tmp_path):
    """Without a method, the run trains the maps (sparse.safetensors keeps them) and the
    compaction at its end materialises them: model.safetensors is the plain lenet5."""
    cfg = TrainConfig(model="lenet5_filtermap", data="synthetic", reg="none", **SLICE)
    result = run(cfg, tmp_path)
    trained = modelfile.load(tmp_path / "sparse.safetensors")
    plain = modelfile.load(tmp_path / "model.safetensors")
    assert trained.compactcnn_spec["name"] == "lenet5_filtermap"
    assert plain.compactcnn_spec == {"name": "lenet5", "num_classes": 10, "in_channels": 1,
                                     "input_size": 28}
    assert result["dense"]["params"] == 43_103 and result["compact"]["params"] == 431_080
    assert result["max_abs_output_diff"] == 0.0


def test_a_method_that_designs_selects_nothing():
    from compactcnn.methods import method

    with pytest.raises(CompactCNNError, match="selects no neurons"):
        method("filtermap").select(None)
