"""Crashes, interrupts, numerical faults and untrusted files lose nothing and let nothing in."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from compactcnn import CompactCNNError, models
from compactcnn.cli import main
from compactcnn.files import checkpoint
from compactcnn.files import modelfile as io
from compactcnn.run import loop as training

SRC = Path(__file__).resolve().parents[1] / "src"
TRAIN = ["train", "--model", "lenet5", "--data", "synthetic", "--limit", "800",
         "--test-limit", "200", "--epochs", "6", "--batch-size", "32", "--lr", "0.01",
         "--lam", "2e-3", "--seed", "1", "--lr-warmup-epochs", "1.5"]


def cli(*args: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "compactcnn.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*args: str) -> subprocess.CompletedProcess:
    p = cli(*args)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("whole") / "run"
    done = finish(*TRAIN, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return load_file(out / "sparse.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigkill_at_random_moments_then_resume_gives_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "run"
    ckpt = out / "checkpoint.safetensors"
    rng = random.Random(7)
    for _ in range(3):
        resume = ["--resume"] if ckpt.exists() else []
        p = cli(*TRAIN, "--out", str(out), *resume)
        time.sleep(rng.uniform(3.0, 7.0))
        p.kill()
        p.communicate()
        if ckpt.exists():
            checkpoint.load(ckpt)  # never corrupt: this raises on a torn file
    done = finish(*TRAIN, "--out", str(out), *(["--resume"] if ckpt.exists() else []))
    assert done.returncode == 0, done.stderr
    assert_same_weights(uninterrupted, load_file(out / "sparse.safetensors"))


def test_sigint_saves_mid_epoch_and_resume_gives_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "run"
    p = cli(*TRAIN, "--out", str(out))
    deadline = time.time() + 120
    while not (out / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)  # early in the second epoch
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    state = checkpoint.load(out / "checkpoint.safetensors")
    assert state["epoch"] >= 1
    done = finish(*TRAIN, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert_same_weights(uninterrupted, load_file(out / "sparse.safetensors"))


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real, calls = training.run_epoch, []

    def poisoned(model, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real(model, *a, **k)

    monkeypatch.setattr(training, "run_epoch", poisoned)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nan" in err.lower() and "checkpoint" in err
    state = checkpoint.load(out / "checkpoint.safetensors")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_huge_lam_warns_and_keeps_neurons_in_every_layer(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.warns(UserWarning) as caught:
        assert main(["train", "--data", "synthetic", "--epochs", "1", "--lam", "50",
                     "--out", str(out)]) == 0
    groups = [str(w.message) for w in caught]
    assert len(groups) == len(set(groups)), "each group warns once"
    model = io.load(out / "model.safetensors")
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert m.weight.shape[0] >= 1


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_files_are_refused_everywhere_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    with open(evil, "wb") as f:
        pickle.dump({"state": _Payload(marker)}, f)
    torch_evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, torch_evil)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.safetensors").write_bytes(evil.read_bytes())
    (run / "model.safetensors").write_bytes(evil.read_bytes())
    for argv in (["table", str(evil)], ["table", str(torch_evil)],
                 ["compact", str(evil), "--out", str(tmp_path / "c.safetensors")],
                 ["export", str(run), "--onnx", str(tmp_path / "m.onnx")],
                 [*TRAIN, "--out", str(run), "--resume"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(CompactCNNError):
        io.load(evil)
    with pytest.raises(CompactCNNError):
        checkpoint.load(evil)
    assert not marker.exists()


def test_run_folder_links_cannot_escape(tmp_path, capsys):
    outside = tmp_path / "outside.safetensors"
    io.save(models.create("lenet5"), outside)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").symlink_to(outside)
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "outside" in capsys.readouterr().err


TOKENS = ["table", "compact", "report", "export", "lenet5", "mlp", "nosuch", "--input",
          "1,28,28", "3,x,1", "--remove", "conv1=3", "conv1=", "fc4=1", "=", "--classes", "-1",
          "0", "7", "--dtype", "int4", "float16", "--batch", "--json", "--out", "/nonexistent/x",
          "--onnx", "--strict", "--force", "", "\x00", "runs/none", "a:b", "os:getcwd"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=6))
def test_fuzzed_arguments_never_give_a_traceback(argv):
    try:
        code = main(argv)
    except SystemExit as e:  # --help
        code = e.code
    assert code in (0, 2)
