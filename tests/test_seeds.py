"""``compare --seeds``: one comparison per seed, and verdicts that a seed's spread cannot fake."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from compactcnn.cli import main
from compactcnn.errors import CompactCNNError
from compactcnn.run.compare import compare
from compactcnn.run.compare_report import answer
from compactcnn.run.pipeline import run
from compactcnn.run.seeds import compare_seeds, paired
from tests.test_methods import _cfg

ACCURACY = st.floats(0.0, 1.0, allow_nan=False)
# should a refusal fail to come, the comparison that runs instead is a short one
CHEAP = ["--model", "lenet5", "--data", "synthetic", "--target", "params=0.2", "--methods",
         "uniform", "--limit", "64", "--test-limit", "32", "--epochs", "1"]


def test_the_interval_is_students_t_over_the_seeds():
    # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t(0.975, 2) = 4.3027
    level = paired([0.91, 0.92, 0.93], [0.90, 0.90, 0.90])
    assert level["difference"] == pytest.approx(0.02)
    assert level["half_width"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert (level["verdict"], level["ahead_on"], level["seeds"]) == ("level", 3, 3)
    # the same mean with a tenth of the spread clears it
    assert paired([0.921, 0.920, 0.919], [0.90] * 3)["verdict"] == "ahead"
    one = paired([0.91], [0.90])
    assert one["half_width"] is None and one["verdict"] == "one seed: no verdict"


@given(st.lists(st.tuples(ACCURACY, ACCURACY), min_size=2, max_size=8),
       st.floats(-0.2, 0.2, allow_nan=False))
def test_a_verdict_is_a_lead_only_where_the_interval_excludes_zero(pairs, shift):
    ours, theirs = [a for a, _ in pairs], [b for _, b in pairs]
    p = paired(ours, theirs)
    diff = [a - b for a, b in pairs]
    assert p["difference"] == pytest.approx(statistics.mean(diff), abs=1e-12)
    assert p["ahead_on"] == sum(d > 0 for d in diff)
    low, high = p["difference"] - p["half_width"], p["difference"] + p["half_width"]
    assert p["verdict"] == ("ahead" if low > 0 else "behind" if high < 0 else "level")
    # the other way round, the other verdict; shifting one side moves the mean, not the width
    back = paired(theirs, ours)
    assert back["verdict"] == {"ahead": "behind", "behind": "ahead", "level": "level"}[
        p["verdict"]]
    moved = paired(ours, [t + shift for t in theirs])
    assert moved["difference"] == pytest.approx(p["difference"] - shift, abs=1e-9)
    assert moved["half_width"] == pytest.approx(p["half_width"], abs=1e-9)


def _summary(verdicts: dict[str, str], seeds: int = 3, reference: str | None = "group"):
    methods = [{"method": "group"}] + [
        {"method": m, "vs_reference": {"verdict": v}} for m, v in verdicts.items()]
    return {"reference": reference, "seeds": list(range(seeds)), "confidence": 0.95,
            "methods": methods}


def test_the_answer_sorts_every_method_by_its_verdict():
    text = answer(_summary({"dense": "behind", "uniform": "ahead", "l1-filter": "level",
                            "torch-pruning": "ahead", "scratch": "level"}))
    assert text == ("**The answer**: over seeds 0, 1, 2, group is ahead of uniform and "
                    "torch-pruning; level with l1-filter and scratch; behind dense (95% "
                    "intervals).")
    assert answer(_summary({"uniform": "level"})).endswith("group is level with uniform (95% "
                                                           "intervals).")
    assert "one seed cannot tell" in answer(_summary({"uniform": "ahead"}, seeds=1))
    assert "no method of ours ran on every seed" in answer(_summary({}, reference=None))
    assert "group ran alone" in answer(_summary({}))


def test_compare_over_seeds_is_each_seeds_comparison_summed_up(tmp_path, monkeypatch):
    base = _cfg("group", model="lenet5", target="params=0.2")
    methods = ("group", "uniform", "slimming")
    result = compare_seeds(base, tmp_path, [0, 1], methods)
    per_seed = [json.loads((tmp_path / f"seed-{s}" / "compare.json").read_text())
                for s in (0, 1)]
    assert [r["seed"] for r in per_seed] == [0, 1] == result["seeds"]
    monkeypatch.setattr("compactcnn.run.compare.run", _skip_slimming)  # nothing else reruns
    # each seed's folder is the plain comparison at that seed
    assert per_seed[1] == json.loads(json.dumps(compare(
        _cfg("group", model="lenet5", target="params=0.2", seed=1), tmp_path / "seed-1",
        methods)))
    by = {m["method"]: m for m in result["methods"]}
    assert result["reference"] == "group" and set(by) == {"dense", *methods}
    for name in ("dense", "group", "uniform"):
        accuracy = [next(r["accuracy"] for r in s["rows"] if r["method"] == name)
                    for s in per_seed]
        assert [r["accuracy"] for r in by[name]["runs"]] == accuracy
        assert by[name]["mean"] == pytest.approx(statistics.mean(accuracy))
        assert by[name]["params"] <= (0.2 if name != "dense" else 1.0)
    group = [r["accuracy"] for r in by["group"]["runs"]]
    uniform = [r["accuracy"] for r in by["uniform"]["runs"]]
    assert by["uniform"]["vs_reference"] == paired(group, uniform)
    assert "vs_reference" not in by["group"] and "no BatchNorm" in by["slimming"]["skipped"]
    assert json.loads((tmp_path / "compare.json").read_text()) == json.loads(json.dumps(result))
    text = (tmp_path / "compare.md").read_text()
    assert text.count("\n| ") == 1 + 4 and "| group | " in text and "reference" in text
    assert f"\n{answer(result)}\n" in text and "uniform" in answer(result)
    assert f"{100 * by['uniform']['vs_reference']['difference']:+.2f}" in text
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert compare_seeds(base, tmp_path, [0, 1], methods) == result  # read back, not rerun


def _skip_slimming(cfg, *args, **kwargs):
    assert cfg.method == "slimming", f"{cfg.method} was trained again"
    return run(cfg, *args, **kwargs)  # refuses at once: lenet5 has no BatchNorm


def test_seeds_refuse_a_repeat_and_a_dense_folder_without_them(tmp_path):
    base = _cfg("uniform", model="lenet5", target="params=0.2")
    with pytest.raises(CompactCNNError, match="repeats a seed"):
        compare_seeds(base, tmp_path / "a", [0, 0], ("uniform",))
    with pytest.raises(CompactCNNError, match="no finished seed-1/dense there"):
        compare_seeds(base, tmp_path / "b", [1], ("uniform",), dense=tmp_path / "a")
    (tmp_path / "d" / "seed-1" / "dense").mkdir(parents=True)  # started, never finished
    with pytest.raises(CompactCNNError, match="no finished seed-1/dense there"):
        compare_seeds(base, tmp_path / "b", [1], ("uniform",), dense=tmp_path / "d")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("argv, words", [
    (["--seed", "1", "--seeds", "0", "1"], "not both"),
    (["--seeds", "2", "2"], "repeats a seed"),
    (["--seeds", "0", "--dense", "nowhere"], "no finished seed-0/dense there"),
])
def test_bad_seeds_get_one_line_and_exit_2(argv, words, tmp_path, capsys):
    code = main(["compare", *CHEAP, "--out", str(tmp_path / "c"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("held, argv, words", [
    ({"seed": 0, "rows": []}, ["--seeds", "0", "1"], "holds a comparison of one seed"),
    ({"seeds": [0, 1], "methods": []}, ["--seed", "0"], "holds a comparison over seeds"),
    ("{not json", ["--seeds", "0"], "is not a comparison's summary"),
])
def test_a_summary_of_the_other_kind_is_never_overwritten(held, argv, words, tmp_path, capsys):
    (tmp_path / "c").mkdir()
    summary = tmp_path / "c" / "compare.json"
    summary.write_text(held if isinstance(held, str) else json.dumps(held))
    before = summary.read_bytes()
    code = main(["compare", *CHEAP, "--out", str(tmp_path / "c"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert summary.read_bytes() == before and sorted(p.name for p in summary.parent.iterdir()) \
        == ["compare.json"]


def test_runs_side_by_side_are_the_runs_one_at_a_time(tmp_path, capsys):
    base = _cfg("group", model="lenet5", target="params=0.2")
    methods = ("group", "uniform", "scratch")  # scratch waits for group's widths
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what each of two workers gets out of two threads
        alone = compare_seeds(base, tmp_path / "alone", [0, 1], methods)
        torch.set_num_threads(2)
        together = compare_seeds(base, tmp_path / "together", [0, 1], methods, jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert together == alone
    err = capsys.readouterr().err
    for s in (0, 1):
        for m in ("dense", *methods):
            folder = tmp_path / "together" / f"seed-{s}" / m
            assert f"{folder}: " in err and "% of the parameters" in err
            assert "epoch 1/" in (folder / "log.txt").read_text()  # its progress went here
            mine, theirs = (load_file(str(f / f"seed-{s}" / m / "model.safetensors"))
                            for f in (tmp_path / "together", tmp_path / "alone"))
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k])
                                                        for k in mine)
    # the folders are ordinary seed comparisons: one process reads them back
    assert compare_seeds(base, tmp_path / "together", [0, 1], methods) == alone


def test_a_failing_run_is_named_and_the_others_finish(tmp_path, capsys):
    other = tmp_path / "c" / "seed-1" / "uniform"  # a finished run of other options
    assert main(["train", "--model", "lenet5", "--data", "synthetic", "--target", "params=0.2",
                 "--method", "uniform", "--limit", "64", "--test-limit", "32", "--epochs", "2",
                 "--seed", "1", "--out", str(other)]) == 0
    capsys.readouterr()
    code = main(["compare", *CHEAP, "--out", str(tmp_path / "c"), "--seeds", "0", "1",
                 "--jobs", "2"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len([line for line in err if "error" in line]) == 1, err
    assert f"compactcnn: error: {other}: " in err[-1] and "another configuration" in err[-1]
    assert (tmp_path / "c" / "seed-0" / "compare.json").is_file()  # seed 0 ran to its end
    assert not (tmp_path / "c" / "compare.json").exists()


def test_every_seeds_folder_is_checked_before_any_trains(tmp_path, capsys):
    held = tmp_path / "c" / "seed-1" / "compare.json"
    held.parent.mkdir(parents=True)
    held.write_text(json.dumps({"seeds": [0, 1], "methods": []}))
    code = main(["compare", *CHEAP, "--out", str(tmp_path / "c"), "--seeds", "0", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "holds a comparison over seeds" in err, err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["seed-1"]  # nothing new


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--seeds", "0", "1", "--jobs", "0"]])
def test_jobs_below_one_get_one_line_and_exit_2(argv, tmp_path, capsys):
    code = main(["compare", *CHEAP, "--out", str(tmp_path / "c"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--jobs must be >= 1" in err, err
    assert not (tmp_path / "c").exists()
