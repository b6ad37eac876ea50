"""Crashes, interrupts, numerical faults and untrusted files lose nothing and let nothing in."""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compactcnn import CompactCNNError, models
from compactcnn.cli import main
from compactcnn.files import checkpoint
from compactcnn.files import modelfile as io
from compactcnn.run import loop as training
from compactcnn.sparsity import neuron_groups

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


EPOCHS = int(TRAIN[TRAIN.index("--epochs") + 1])


def stamp(path: Path) -> tuple[int, int] | None:
    """What changes when the checkpoint is rewritten (atomically, so as a new file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def wait_for_an_epoch(p: subprocess.Popen, ckpt: Path, timeout: float = 120) -> None:
    """Until ``p`` rewrites the checkpoint (it is training) or exits."""
    before, deadline = stamp(ckpt), time.time() + timeout
    while stamp(ckpt) == before and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)


def test_sigkill_at_random_moments_then_resume_gives_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "run"
    ckpt = out / "checkpoint.safetensors"
    rng = random.Random(7)
    kills_mid_training = resumes_mid_training = 0
    for _ in range(3):
        resume = ["--resume"] if ckpt.exists() else []
        resumes_mid_training += bool(resume)
        p = cli(*TRAIN, "--out", str(out), *resume)
        # Once this process has finished an epoch it is training: kill it somewhere after
        # that, in the next epoch, its evaluation or its checkpoint write.
        wait_for_an_epoch(p, ckpt)
        time.sleep(rng.uniform(0.0, 1.5))
        p.kill()
        p.communicate()
        if ckpt.exists():
            epoch = checkpoint.load(ckpt)["epoch"]  # never corrupt: this raises on a torn file
            kills_mid_training += p.returncode == -signal.SIGKILL and epoch < EPOCHS
    assert kills_mid_training >= 1, "no kill landed before training ended"
    done = finish(*TRAIN, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert resumes_mid_training >= 1, "no run resumed an interrupted training"
    assert_same_weights(uninterrupted, load_file(out / "sparse.safetensors"))


def test_sigint_saves_mid_epoch_and_resume_gives_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "run"
    ckpt = out / "checkpoint.safetensors"
    p = cli(*TRAIN, "--out", str(out))
    wait_for_an_epoch(p, ckpt)
    p.send_signal(signal.SIGINT)  # early in the second epoch: it stops after that batch
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    state = checkpoint.load(ckpt)
    assert 1 <= state["epoch"] < EPOCHS
    assert state["progress"]["batches"] > 0, "the checkpoint holds a position mid-epoch"
    done = finish(*TRAIN, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    # Equal weights mean the resumed run skipped exactly the saved batches: had it started the
    # epoch over, it would have taken those batches' steps twice.
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


def test_a_huge_lam_keeps_min_neurons_in_every_layer_and_warns_for_each(tmp_path):
    out = tmp_path / "run"
    with pytest.warns(UserWarning) as caught:
        assert main(["train", "--data", "synthetic", "--epochs", "1", "--lam", "50",
                     "--min-neurons", "2", "--out", str(out)]) == 0
    kept = [str(w.message) for w in caught if "min_neurons=2" in str(w.message)]
    groups = neuron_groups(models.create("lenet5"), (1, 28, 28))
    assert sorted(re.findall(r"group '([^']+)'", " ".join(kept))) == sorted(g.name for g in groups)
    assert all("keeping the 2 largest" in message for message in kept)
    for name, state in (("sparse", load_file(out / "sparse.safetensors")),
                        ("compact", io.load(out / "model.safetensors").state_dict())):
        for g in groups:
            rows = state[f"{g.name}.weight"].flatten(1)
            assert int(rows.ne(0).any(dim=1).sum()) >= 2, (name, g.name)


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
