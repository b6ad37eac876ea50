"""Training under torchrun: two processes, and two "nodes" meeting over TCP on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SRC = Path(__file__).resolve().parents[1] / "src"
# 640 images leave 576 for training: 9 full global batches of 64, so that every process
# count splits every batch evenly and runs can be compared step for step.
TRAIN = ["train", "--model", "lenet5", "--data", "synthetic", "--limit", "640", "--test-limit",
         "128", "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--lam", "2e-3"]
ENV = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "compactcnn.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, *launcher: str) -> subprocess.CompletedProcess:
    return subprocess.run([*torchrun(*launcher), *TRAIN, "--out", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("one") / "run"
    done = launch(out, "--standalone", "--nproc-per-node", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    return load_file(out / "sparse.safetensors")


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_two_processes_match_one(one_process, tmp_path) -> None:
    out = tmp_path / "run"
    done = launch(out, "--standalone", "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test accuracy") == 1, "rank 0 alone reports"
    assert (out / "report.json").is_file() and (out / "checkpoint.safetensors").is_file()
    assert_close(one_process, load_file(out / "sparse.safetensors"))


def test_two_nodes_over_tcp_match_one(one_process, tmp_path) -> None:
    out = tmp_path / "run"
    rdzv = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "compactcnn-test"]
    nodes = [subprocess.Popen([*torchrun(*rdzv), *TRAIN, "--out", str(out)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [n.communicate(timeout=300) for n in nodes]
    for node, (_, err) in zip(nodes, results, strict=True):
        assert node.returncode == 0, err[-2000:]
    assert_close(one_process, load_file(out / "sparse.safetensors"))
