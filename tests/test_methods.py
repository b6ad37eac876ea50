"""Every method in the shared harness: budgets met, figures consistent, bad input refused."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from compactcnn.accounting import neuron_table
from compactcnn.cli import build_parser, main
from compactcnn.errors import CompactCNNError, ConfigMismatch
from compactcnn.files import modelfile
from compactcnn.methods import METHODS
from compactcnn.run.compare import Plan, command, compare
from compactcnn.run.compare_report import SEED_CAVEAT
from compactcnn.run.config import TrainConfig, differences
from compactcnn.run.pipeline import run
from compactcnn.run.report import summary
from compactcnn.run.toml import config_from
from tests.cli_helpers import interrupt_second_epoch

SMALL = dict(data="synthetic", limit=256, test_limit=128, epochs=2, batch_size=64,
             lr_warmup_epochs=0.5)


def _cfg(method: str, model: str = "vgg_small", target: str = "params=0.25", **kw) -> TrainConfig:
    widths = "features.0=8,features.3=8,features.7=16,features.10=16,features.14=32," \
             "features.17=32,classifier.0=64" if method == "scratch" else None
    return TrainConfig(model=model, method=method, target=target, widths=widths, **SMALL | kw)


# Those compact by design have their own tests (test_by_design.py): gray_hist needs colour data.
@pytest.mark.parametrize("metric", ["params", "flops"])
@pytest.mark.parametrize("method", sorted(set(METHODS) - {"filtermap", "gray_hist"}))
def test_every_method_meets_its_budget_and_reports_the_model_it_saved(method, metric, tmp_path):
    cfg = _cfg(method, target=f"{metric}=0.25")
    result = run(cfg, tmp_path)
    reached = result["budget"]["reached"]
    if method == "scratch":  # the widths it was given decide its size, not the budget
        widths = dict(w.split("=") for w in cfg.widths.split(","))
        assert {k: int(v) for k, v in widths.items()} == \
            {layer["name"]: layer["neurons_after"] for layer in result["layers"][:-1]}
    else:
        assert 0.25 * 0.98 <= reached[metric] <= 0.25, reached
    saved = modelfile.load(tmp_path / "model.safetensors")
    table = neuron_table(saved, (1, 28, 28))
    assert result["compact"]["params"] == table.total_params
    for k in ("params", "flops"):
        assert result["compact"][k] == round(reached[k] * result["dense"][k])
    assert result["max_abs_output_diff"] <= 1e-5
    assert result["method"] == method
    # Every removed neuron was either dead when the sparse phase ended or chosen at selection.
    s = result["selection"]
    removed = sum(layer["neurons_before"] - layer["neurons_after"] for layer in result["layers"])
    assert not result["kept"]
    assert s["dead_in_training"] + s["chosen_at_selection"] == removed > 0
    assert s["sparse_steps"] == (0 if method in ("scratch", "uniform") else 4)


def test_the_report_says_when_our_penalty_removed_less_than_the_trim():
    base = {"model": "lenet5", "data": "synthetic", "reg": "group", "lam": 1e-4, "epochs": 2,
            "train_seconds": 1.0, "dense": {"params": 100}, "compact": {"params": 10},
            "accuracy": 0.5, "max_abs_output_diff": 0.0, "layers": []}
    mostly_trim = {"sparse_steps": 4, "dead_in_training": 1, "chosen_at_selection": 9,
                   "brought_back": 2}
    text = summary(base | {"method": "group", "selection": mostly_trim})
    assert "removed: 1 neuron(s) dead when the sparse phase ended, 9 chosen at the selection " \
           "point, 2 dead one(s) brought back" in text
    assert "4 sparse steps were too few" in text
    assert "overshot the budget; 2 dead neuron(s) came back" in text
    # Another method's removals are all chosen at selection: no note.
    assert "note:" not in summary(base | {"method": "torch-pruning", "reg": "none",
                                          "selection": mostly_trim})
    mostly_penalty = mostly_trim | {"dead_in_training": 9, "chosen_at_selection": 1,
                                    "brought_back": 0}
    assert "note:" not in summary(base | {"method": "group", "selection": mostly_penalty})


def test_a_budget_met_at_the_start_kills_nothing(tmp_path):
    result = run(_cfg("group", target="params=1"), tmp_path)
    assert result["compact"]["params"] == result["dense"]["params"]
    assert all(layer["neurons_after"] == layer["neurons_before"] for layer in result["layers"])


def test_an_impossible_budget_is_refused_before_training(tmp_path):
    with pytest.raises(CompactCNNError, match="cannot be met"):
        run(_cfg("group", model="lenet5", target="params=0.0001"), tmp_path)
    assert not (tmp_path / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("argv, words", [
    (["--target", "params"], "malformed target"),
    (["--target", "params=1.5"], "(0, 1]"),
    (["--target", "params=0"], "(0, 1]"),
    (["--target", "size=0.1"], "malformed target"),
    (["--method", "l1-filter"], "needs a budget"),
    (["--method", "slimming", "--target", "params=0.1"], "no BatchNorm"),
    (["--method", "scratch", "--target", "params=0.1"], "widths"),
    (["--target", "params=0.1", "--min-neurons", "0"], "--min-neurons must be >= 1"),
])
def test_bad_budgets_and_methods_get_one_line_and_exit_2(argv, words, tmp_path, capsys):
    code = main(["train", "--model", "lenet5", "--data", "synthetic", "--limit", "64",
                 "--epochs", "1", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err


def test_compare_runs_every_method_once_and_resumes(tmp_path, monkeypatch):
    base = _cfg("group", model="lenet5", target="params=0.2")
    methods = ("group", "l1-filter", "slimming", "scratch", "uniform")
    first = compare(base, tmp_path, methods)
    rows = {r["method"]: r for r in first["rows"]}
    assert set(rows) == {"dense", *methods}
    assert "no BatchNorm" in rows["slimming"]["skipped"]
    assert rows["scratch"]["widths"] == rows["group"]["widths"]
    for name in ("group", "l1-filter", "scratch", "uniform"):
        assert rows[name]["params"] <= 0.2 * rows[name]["dense_params"]
        assert f"--method {name}" in rows[name]["command"]
    assert "--reg none" in rows["dense"]["command"]
    for row in first["rows"]:  # each row's command gives that row's run, the dense one too
        if "config" in row:
            args = build_parser().parse_args(shlex.split(row["command"])[1:])
            assert config_from(args) == TrainConfig(**row["config"]), row["method"]
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(first["rows"]))
    text = (tmp_path / "compare.md").read_text()
    assert text.count("\n| ") == len(methods) + 2  # and the header and the dense row
    assert text.endswith(f"\n\n{SEED_CAVEAT}\n") and "--seeds" in SEED_CAVEAT
    assert (tmp_path / "compare.png").stat().st_size > 0

    ran = []

    def record(cfg, *args, **kwargs):  # only what has no report may run again
        ran.append(cfg.method)
        raise CompactCNNError("slimming does not apply to this model: it has no BatchNorm")

    monkeypatch.setattr("compactcnn.run.compare.run", record)
    again = compare(base, tmp_path, methods)
    assert ran == ["slimming"]
    assert [r.get("accuracy") for r in again["rows"]] == [r.get("accuracy") for r in first["rows"]]

    # reports written before "input_shape" held the method's name and the traced shape under
    # the configuration's keys "method" and "input": they still read back as the same runs
    for name in ("dense", "group", "l1-filter", "scratch", "uniform"):
        path = tmp_path / name / "report.json"
        old = json.loads(path.read_text())
        assert old["method"] == (None if name == "dense" else name) and old["input"] is None
        old |= {"method": old["method"] or old["reg"], "input": old.pop("input_shape")}
        path.write_text(json.dumps(old))
    assert [r.get("accuracy") for r in compare(base, tmp_path, methods)["rows"]] == \
        [r.get("accuracy") for r in first["rows"]] and ran == ["slimming", "slimming"]

    # started again with another option, it refuses to read back the runs made without it
    report = (tmp_path / "group" / "report.json").read_bytes()
    with pytest.raises(ConfigMismatch, match=r"group holds a finished run .*reweight \(1\.0 "
                                             r"in the recorded run, 0\.0 now\)"):
        compare(replace(base, reweight=0.0), tmp_path, methods)
    assert ran == ["slimming", "slimming"]
    assert (tmp_path / "group" / "report.json").read_bytes() == report


def test_compare_reads_back_another_comparisons_dense_run(tmp_path, monkeypatch, capsys):
    base = _cfg("uniform", model="lenet5", target="params=0.2")
    first = compare(base, tmp_path / "p20", ("uniform",))

    def refuse(cfg, *args, **kwargs):
        assert cfg.method is not None, "the dense run was trained again"
        return run(cfg, *args, **kwargs)

    monkeypatch.setattr("compactcnn.run.compare.run", refuse)
    second = compare(replace(base, target="params=0.1"), tmp_path / "p10", ("uniform",),
                     dense=tmp_path / "p20" / "dense")
    assert second["rows"][0] | {"wall_seconds": None} == first["rows"][0] | {"wall_seconds": None}
    assert f"--out {tmp_path / 'p20' / 'dense'}" in second["rows"][0]["command"]
    assert not (tmp_path / "p10" / "dense").exists()
    assert second["rows"][1]["params"] <= 0.1 * second["rows"][1]["dense_params"]

    with pytest.raises(ConfigMismatch, match=r"seed \(0 in the recorded run, 1 now\)"):
        compare(replace(base, seed=1), tmp_path / "s1", ("uniform",),
                dense=tmp_path / "p20" / "dense")
    capsys.readouterr()
    code = main(["compare", "--model", "lenet5", "--data", "synthetic", "--target",
                 "params=0.1", "--dense", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "p10b")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no finished run there" in err, err
    assert not (tmp_path / "p10b").exists()


@pytest.mark.parametrize("options", [{}, {"balance": "cost", "compact_lr": "restart",
                                           "reweight": 1.0},
                                     {"target": "params=0.25,flops=0.5"}])  # per-metric
def test_a_resumed_budget_run_equals_an_uninterrupted_one(options, tmp_path, monkeypatch):
    cfg = _cfg("group", model="lenet5", epochs=4, prune_fraction=0.75, **options)
    whole = run(cfg, tmp_path / "whole")
    restore = interrupt_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "parts")
    restore()
    resumed = run(cfg, tmp_path / "parts", resuming=True)
    a = modelfile.load(tmp_path / "whole" / "model.safetensors").state_dict()
    b = modelfile.load(tmp_path / "parts" / "model.safetensors").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["accuracy"] == whole["accuracy"]


def test_reweight_stays_only_in_runs_with_a_group_term():
    assert _cfg("group").reweight == 1.0  # a budget run's default
    assert _cfg("group", reweight=0.0).reweight == 0.0
    assert TrainConfig(reg="group", lam=1e-4).reweight == 0.0  # lam as given: as before
    assert _cfg("group", reweight=2.0).reweight == 2.0
    assert _cfg("sparse-group", reweight=1.0).reweight == 1.0
    for method in ("low-rank", "torch-pruning", "slimming"):
        assert _cfg(method, reweight=1.0).reweight == 0.0  # what the run does, said
    with pytest.raises(CompactCNNError, match="reweight must be >= 0"):
        _cfg("group", reweight=-0.5)


def test_each_budget_shares_lam_by_the_price_of_what_it_counts():
    assert _cfg("group", target="flops=0.25").balance == "sqrt-cost"
    assert _cfg("group+low-rank", target="params=0.1,flops=0.2").balance == "per-metric"
    assert _cfg("group", target="params=0.1,flops=0.2", balance="none").balance == "none"
    assert _cfg("group").balance == "none"  # params=0.25
    assert _cfg("group", target="flops=0.25", balance="none").balance == "none"  # as asked
    assert _cfg("group", balance="cost").balance == "cost"
    assert TrainConfig(reg="group", lam=1e-4).balance == "none"  # no budget: no controller
    for method in ("torch-pruning", "l1-filter", "uniform", "scratch"):  # no lam to share
        assert _cfg(method, target="flops=0.25", balance="cost").balance == "none"
    # compare narrows its base to each row: ours keeps the default, a baseline says none
    base = TrainConfig(target="flops=0.25")
    assert replace(base, method="group").balance == "sqrt-cost"
    assert replace(base, method="torch-pruning").balance == "none"


def test_lam_starts_higher_only_under_a_reweighted_budget():
    assert _cfg("group").lam == 3e-4
    assert _cfg("group", reweight=0.0).lam == 3e-5  # plain group lasso: as before
    assert _cfg("group", lam=1e-5).lam == 1e-5
    assert TrainConfig(reg="group").lam == 3e-5  # lam as given, no budget
    assert _cfg("low-rank").lam == 3e-5
    joint = "params=0.1,flops=0.2"
    assert _cfg("group+low-rank", target=joint).lam == 1e-4  # per-metric's mixed price
    assert _cfg("group", target=joint, balance="none").lam == 3e-4  # one price: as before
    assert _cfg("group", target="flops=0.2", balance="per-metric").lam == 3e-4  # one metric
    assert _cfg("group", target=joint, lam=3e-4).lam == 3e-4  # as asked


def test_a_run_without_a_penalty_is_one_configuration_whichever_path_made_it():
    # compare narrows its budget run's config to each baseline; train starts from the flags
    base = _cfg("group")
    for method in ("torch-pruning", "l1-filter", "slimming", "uniform", "evolutionary"):
        from_compare, from_train = replace(base, method=method), _cfg(method)
        assert from_compare == from_train and from_train.lam == 0.0, method
        assert "--lam" not in command(from_compare, Path("r"), "cpu")
    dense = replace(base, method=None, reg="none", target=None)
    assert dense == TrainConfig(**SMALL, model=base.model, reg="none", lam=1e-4)
    assert "--lam" not in command(base, Path("r"), "cpu")  # 3e-4 is the budget run's start
    assert "--lam 1e-05" in command(replace(base, lam=1e-5), Path("r"), "cpu")
    # a run recorded before lam was resolved to 0 for it is still the same configuration
    recorded = asdict(from_train) | {"lam": 3e-4}
    assert differences(recorded, from_compare) == []
    assert differences(recorded | {"epochs": 3}, from_compare) == \
        ["epochs (3 in the recorded run, 2 now)"]


def test_group_low_rank_has_a_nuclear_norm_without_being_told_and_the_others_none():
    """``--method group+low-rank`` without ``--lam-rank`` used to run with a zero nuclear
    norm: plain group sparsity under another name, whose compare row differed from group's
    in nothing but the label. It starts at the measured 3e-5 now, and compare's command
    omits it; an explicit value still wins."""
    from compactcnn.sparsity.penalties import GroupLowRank, make_penalty

    cfg = _cfg("group+low-rank")
    assert cfg.lam_rank == 3e-5
    penalty = make_penalty(cfg.reg, cfg.lam, cfg.lam1, cfg.lam_rank, cfg.reweight)
    assert isinstance(penalty, GroupLowRank) and penalty.lam_rank == 3e-5
    assert "--lam-rank" not in command(cfg, Path("r"), "cpu")
    assert _cfg("group+low-rank", lam_rank=1e-4).lam_rank == 1e-4
    assert "--lam-rank 0.0001" in command(_cfg("group+low-rank", lam_rank=1e-4), Path("r"),
                                          "cpu")
    for method in ("group", "sparse-group", "low-rank", "torch-pruning", "uniform"):
        assert _cfg(method, lam_rank=1e-4).lam_rank == 0.0, method  # it has none to weigh


def test_a_budget_run_that_names_no_penalty_gets_the_nuclear_norm_beside_the_group_term():
    """The measured default (README, *The penalty of a budget run*): group+low-rank led the
    group term alone on 11 runs of 12. Without a budget the paper's group lasso stays; a
    penalty or method named is kept."""
    from compactcnn.run.config import TrainConfig

    budget = TrainConfig(target="params=0.10")
    assert (budget.reg, budget.method_name, budget.lam_rank) == ("group+low-rank",
                                                                 "group+low-rank", 3e-5)
    assert (TrainConfig().reg, TrainConfig().lam_rank) == ("group", 0.0)
    assert TrainConfig(target="params=0.10", reg="group").reg == "group"
    assert TrainConfig(target="params=0.10", method="group").reg == "group"
    assert TrainConfig(target="params=0.10", method="uniform").reg == "none"


@pytest.mark.parametrize("compact_lr", ["continue", "restart"])
def test_the_compact_network_continues_or_restarts_the_schedule(compact_lr, tmp_path,
                                                               monkeypatch):
    from compactcnn.run import loop

    real, starts = loop.run_epoch, []

    def record(model, optimizer, scheduler, *args, **kwargs):
        starts.append(optimizer.param_groups[0]["lr"])
        return real(model, optimizer, scheduler, *args, **kwargs)

    monkeypatch.setattr(loop, "run_epoch", record)
    cfg = _cfg("group", model="lenet5", epochs=4, compact_lr=compact_lr, lr_warmup_epochs=0)
    run(cfg, tmp_path)
    lr = cfg.learning_rate
    assert starts[0] == pytest.approx(lr)  # the sparse phase starts the run's schedule
    if compact_lr == "restart":  # the survivors get the whole cosine over the epochs left
        assert starts[2] == pytest.approx(lr)
    else:  # halfway down the cosine over 4 epochs
        assert starts[2] == pytest.approx(lr / 2, rel=0.05)


def test_label_smoothing_shapes_the_loss_of_every_phase(tmp_path, monkeypatch):
    """Sparse phase, compact network and fine-tuning all train on the smoothed loss."""
    from compactcnn.run import loop

    real, losses = loop.run_epoch, []

    def record(*args, loss_fn=torch.nn.functional.cross_entropy, **kwargs):
        losses.append(loss_fn)
        return real(*args, loss_fn=loss_fn, **kwargs)

    monkeypatch.setattr(loop, "run_epoch", record)
    run(_cfg("group", model="lenet5", epochs=4, finetune_epochs=1, label_smoothing=0.3), tmp_path)
    logits, labels = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)), \
        torch.arange(16) % 10
    smoothed = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.3)
    assert len(losses) == 5  # two sparse epochs, two of the compact network, one fine-tuning
    assert all(torch.equal(loss_fn(logits, labels), smoothed) for loss_fn in losses)
    with pytest.raises(CompactCNNError, match=r"label_smoothing must be in \[0, 1\), got 1"):
        TrainConfig(label_smoothing=1.0)


def test_a_method_given_twice_is_one_row(tmp_path):
    plan = Plan(_cfg("group", model="lenet5"), tmp_path, ("uniform", "group", "uniform"))
    assert plan.methods == ("uniform", "group")
    assert [r.name for r in plan.first()] == ["dense", "uniform", "group"]
