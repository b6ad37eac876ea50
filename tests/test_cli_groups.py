"""`compactcnn groups`: the neuron groups, readable and as JSON."""

from __future__ import annotations

import json

from compactcnn.cli import main


def test_json_shows_a_group_spanning_a_residual_add(capsys) -> None:
    assert main(["groups", "resnet20", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    stem = next(g for g in groups if g["name"] == "conv1")
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stem["layers"])
    assert stem["neurons"] == 16
    assert all(s["role"] == "out" for s in stem["slices"])
    assert "fc" not in {g["name"] for g in groups}, "the classifier is never grouped"


def test_full_groups_add_the_next_layers_inputs(capsys) -> None:
    assert main(["groups", "lenet5", "--full"]) == 0
    out = capsys.readouterr().out
    assert "group conv2: 50 neurons" in out
    assert "in  fc3.weight" in out and "16 per neuron" in out


def test_unknown_model_is_one_line(capsys) -> None:
    assert main(["groups", "nosuch"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_groups_traces_in_eval_mode_so_batchnorm_takes_a_batch_of_one(capsys) -> None:
    assert main(["groups", "tests.fixtures_models:tiny_mlp_bn", "--input", "1,4,4"]) == 0
    assert "group 1: 8 neurons" in capsys.readouterr().out
