"""Training under torchrun: N processes take the steps of one, and share every batch fairly.

The runs compared here are ``tests/distributed_worker.py`` (the training part of ``compactcnn
train``, in float64) launched plainly, under torchrun with one process and with two; the
command line itself is launched once, as two "nodes" meeting over TCP on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from compactcnn import models
from compactcnn.data.loaders import epoch_batches, epoch_loader
from compactcnn.files import checkpoint as checkpoint_file
from compactcnn.files import modelfile
from compactcnn.run.distributed import World, rank_loader, share

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
                    "OMP_NUM_THREADS": "1"}
# Without and with BatchNorm, and with BatchNorm and dropout
MODELS = ("lenet5", "vgg_small", "tests.user_models:dropout_cnn")


# --- sharing the batches -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), batch_size=st.integers(1, 64), size=st.integers(1, 8),
       seed=st.integers(0, 2**16), augment=st.booleans())
def test_shares_hold_every_sample_exactly_once(n, batch_size, size, seed, augment) -> None:
    batches = epoch_batches(n, batch_size, seed, 0, augment)
    shares = [share(batches, rank, size) for rank in range(size)]
    assert all(len(s) == len(batches) for s in shares), "every process takes every step"
    for k, batch in enumerate(batches):
        parts = [s[k] for s in shares]
        assert sorted(key for part in parts for key in part) == sorted(batch)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    seen = [key[0] if augment else key for s in shares for batch in s for key in batch]
    assert sorted(seen) == list(range(n)), "no sample repeated, none left out"


@pytest.mark.parametrize(("augment", "workers"), [(False, 0), (True, 1)])
def test_rank_loaders_together_give_the_epoch_loaders_batches(augment, workers) -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(16, 1, 5, 5, generator=g), torch.arange(16))
    rng = torch.get_rng_state()
    ranks = [list(rank_loader(data, 5, 3, 2, World(r, 3), augment, workers)) for r in range(3)]
    assert torch.equal(torch.get_rng_state(), rng), "dropout draws from the global RNG"
    expected = list(epoch_loader(data, 5, 3, 2, augment))  # batches of 5, 5, 5 and 1
    assert all(len(r) == len(expected) for r in ranks)
    for k, (x, y) in enumerate(expected):
        got_x, got_y = torch.empty_like(x), torch.empty_like(y)
        for r in range(3):
            got_x[r::3], got_y[r::3] = ranks[r][k]
        assert torch.equal(got_x, x) and torch.equal(got_y, y)
    assert ranks[2][-1][0].shape == (0, 1, 5, 5), "an empty share is an empty batch"


# --- N processes against one -----------------------------------------------------------------


def worker(out: Path, *launcher: str) -> subprocess.Popen:
    """Train MODELS into ``out``: plainly, or under torchrun with ``launcher``'s options."""
    python = [sys.executable, "-m", "torch.distributed.run", *launcher] if launcher else [
        sys.executable]
    return subprocess.Popen([*python, "-m", "tests.distributed_worker", str(out), *MODELS],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same training plainly, under torchrun on one process and on two, side by side."""
    root = tmp_path_factory.mktemp("runs")
    launched = {"plain": worker(root / "plain"),
                "one": worker(root / "one", "--standalone", "--nproc-per-node", "1"),
                "two": worker(root / "two", "--standalone", "--nproc-per-node", "2")}
    for name, process in launched.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {err[-2000:]}"
    return {name: root / name for name in launched}


def trained(run: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """The weights a run trained, and its [live, dead] neurons per layer."""
    return (load_file(run / f"{name}.safetensors"),
            json.loads((run / f"{name}.json").read_text())["neurons"])


def reported(run: Path, name: str) -> list[float]:
    """The last epoch's training loss and accuracy, as the run's history holds them."""
    return json.loads((run / f"{name}.json").read_text())["train"]


def test_one_process_under_torchrun_is_the_plain_run_exactly(runs) -> None:
    for name in MODELS:
        plain, plain_neurons = trained(runs["plain"], name)
        one, one_neurons = trained(runs["one"], name)
        assert plain.keys() == one.keys()
        assert all(torch.equal(plain[k], one[k]) for k in plain), name
        assert one_neurons == plain_neurons


@pytest.mark.parametrize("name", MODELS)
def test_two_processes_take_the_steps_of_one(runs, name) -> None:
    plain, plain_neurons = trained(runs["plain"], name)
    two, two_neurons = trained(runs["two"], name)
    assert any(dead for _, dead in plain_neurons.values()), "some neurons died"
    assert two_neurons == plain_neurons
    assert two.keys() == plain.keys(), "the model keeps its plain BatchNorm layers"
    # Only the order of float64 sums differs (~1e-15 here); a per-process BatchNorm, or one
    # sample more or less in a step, moves the weights by more than 1e-4.
    for k in plain:
        torch.testing.assert_close(two[k], plain[k], atol=1e-12, rtol=1e-9)
    # The figures are the global batches', not rank 0's share's (which differ by ~1e-2).
    assert reported(runs["two"], name) == pytest.approx(reported(runs["plain"], name), rel=1e-9)


# --- the command line, on two nodes --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_over_tcp_train_augmented_batchnorm_and_save_plain_layers(tmp_path) -> None:
    out = tmp_path / "run"
    rdzv = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "compactcnn-test"]
    train = ["train", "--model", "vgg_small", "--data", "synthetic", "--limit", "151",
             "--test-limit", "64", "--epochs", "1", "--batch-size", "45", "--lr", "0.01",
             "--augment", "--workers", "1", "--out", str(out)]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *rdzv, "-m",
                               "compactcnn.cli", *train], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [n.communicate(timeout=300) for n in nodes]
    for node, (_, err) in zip(nodes, results, strict=True):
        assert node.returncode == 0, err[-2000:]
    assert sum(r[0].count("test accuracy") for r in results) == 1, "rank 0 alone reports"
    assert (out / "report.json").is_file()
    plain_keys = models.create("vgg_small", num_classes=10, in_channels=1,
                               input_size=28).state_dict().keys()
    assert checkpoint_file.load(out / "checkpoint.safetensors")["model"].keys() == plain_keys
    assert modelfile.read(out / "sparse.safetensors")[1].keys() == plain_keys
    norms = [m for m in modelfile.load(out / "sparse.safetensors").modules()
             if "Norm" in type(m).__name__]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
