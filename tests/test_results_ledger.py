"""The README's verdicts remade from the committed run records, on a machine without the runs.

Run folders stay on the machine that trained them; ``benchmarks/results/run-records.jsonl``
keeps what the verdict tables read of each. These tests fail when a verdict file no longer
follows from the records (edited by hand, or a run added without its record), and when a run
that is neither here nor recorded is passed over instead of refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _machine_without_runs(tmp_path: Path) -> Path:
    """A copy of benchmarks/ beside the package, with no runs/ folder."""
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks")
    (tmp_path / "src").symlink_to(ROOT / "src")
    return tmp_path


def _seed_table(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "benchmarks/seed_table.py", *args], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


def test_every_verdict_file_follows_from_the_run_records(tmp_path):
    root = _machine_without_runs(tmp_path)
    done = subprocess.run(["bash", "benchmarks/verdicts.sh", str(tmp_path / "out")], cwd=root,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    made = sorted((tmp_path / "out").glob("verdicts-*.md"))
    assert [f.name for f in made] == sorted(f.name for f in RESULTS.glob("verdicts-*.md"))
    for remade in made:
        assert remade.read_text() == (RESULTS / remade.name).read_text(), remade.name
    # reading the records back rewrites them unchanged
    ledger = "benchmarks/results/run-records.jsonl"
    assert (root / ledger).read_text() == (ROOT / ledger).read_text()


def test_a_run_neither_here_nor_recorded_is_refused_in_one_line(tmp_path):
    root = _machine_without_runs(tmp_path)
    done = _seed_table(root, "ours=runs/nowhere/ours", "ours=0:91.0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        "runs/nowhere/ours: no such run here and no record of it in "
        f"{root / 'benchmarks/results/run-records.jsonl'}")
    assert "Traceback" not in done.stderr


def _report(run: Path, seed: int, accuracy: float) -> None:
    run.mkdir(parents=True)
    report = {"seed": seed, "accuracy": accuracy, "model": "lenet5", "method": "uniform",
              "dense": {"params": 1000, "flops": 4000}, "compact": {"params": 97, "flops": 333},
              "layers": [{"neurons_after": 3}, {"neurons_after": 10}],
              "machine": {"device": "cpu", "cpu_capability": "AVX2", "torch": "2.13.0"}}
    (run / "report.json").write_text(json.dumps(report))


def test_a_recorded_run_reads_back_as_its_folder_did(tmp_path):
    root = _machine_without_runs(tmp_path)
    (root / "benchmarks/results/run-records.jsonl").unlink()
    for seed, accuracy in [(0, 0.9013), (1, 0.8987)]:
        _report(root / f"runs/t/u-s{seed}", seed, accuracy)
    args = ("u=runs/t/u-s0", "u=runs/t/u-s1", "ours=0:90.5", "ours=1:90.6", "--against", "ours")
    from_folders = _seed_table(root, *args, "--record")
    assert from_folders.returncode == 0, from_folders.stderr
    records = (root / "benchmarks/results/run-records.jsonl").read_text().splitlines()
    assert [json.loads(line)["run"] for line in records] == ["runs/t/u-s0", "runs/t/u-s1"]
    shutil.rmtree(root / "runs")
    from_records = _seed_table(root, *args)
    assert from_records.returncode == 0, from_records.stderr
    assert from_records.stdout == from_folders.stdout
    assert "| u | 0, 1 | 90.13, 89.87 | 90.00 |" in from_records.stdout
    assert "9.7%, 9.7% | 8.3%, 8.3% | 3-10, 3-10 |" in from_records.stdout
    # a run started again in its folder is not read from its old record
    (root / "runs/t/u-s1").mkdir(parents=True)
    restarted = _seed_table(root, *args)
    assert restarted.returncode == 2
    assert restarted.stderr.strip().splitlines()[-1].endswith(
        "runs/t/u-s1: no report.json: the run has not finished")


def test_every_record_names_the_options_of_its_command():
    records = [json.loads(line) for line in
               RESULTS.joinpath("run-records.jsonl").read_text().splitlines()]
    assert records and [r["run"] for r in records] == sorted({r["run"] for r in records})
    for record in records:
        assert {"model", "method", "target", "epochs", "seed"} <= set(record["options"])
        assert record["options"]["seed"] == record["seed"]
