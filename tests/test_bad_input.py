"""Every bad input to every subcommand gets one line and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from compactcnn import CompactCNNError, models
from compactcnn.cli import build_parser, main
from compactcnn.files import checkpoint
from compactcnn.files import modelfile as io
from compactcnn.run.rundir import CHECKPOINT
from tests.cli_helpers import one_line_error

FIXTURES = "tests.fixtures_models"


def with_format(source: Path, target: Path, fmt: str) -> Path:
    """A copy of the safetensors file ``source`` whose metadata names format ``fmt``."""
    with safe_open(str(source), framework="pt") as f:
        meta = f.metadata() | {"format": fmt}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, target, metadata=meta)
    return target


# --- groups ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, shape", [(f"{FIXTURES}:tiny_cnn", "1,3,3"),
                                           (f"{FIXTURES}:tiny_cnn", "3,12,12"),
                                           ("lenet.safetensors", "1,8,8")])
def test_groups_refuses_an_input_the_model_cannot_take(tmp_path, monkeypatch, capsys, source,
                                                       shape):
    monkeypatch.chdir(tmp_path)
    io.save(models.create("lenet5"), tmp_path / "lenet.safetensors")
    err = one_line_error(capsys, "groups", source, "--input", shape)
    assert f"does not accept input [{shape.replace(',', ', ')}]" in err


# --- table -------------------------------------------------------------------------------------


def test_an_import_path_is_checked_on_the_meta_device_too(capsys):
    err = one_line_error(capsys, "table", f"{FIXTURES}:tiny_cnn", "--input", "1,2000000,2000000")
    assert "does not accept input [1, 2000000, 2000000]: RuntimeError" in err
    assert "allocate" not in err


# --- compact and export on import paths -------------------------------------------------------


@pytest.mark.parametrize("argv", [["compact", "--out", "small.safetensors"],
                                  ["export", "--onnx", "m.onnx"],
                                  ["export", "--torchscript", "m.pt"]])
def test_compact_and_export_refuse_an_import_path_whose_forward_fails(tmp_path, monkeypatch,
                                                                      capsys, argv):
    monkeypatch.chdir(tmp_path)
    command, *rest = argv
    err = one_line_error(capsys, command, f"{FIXTURES}:fails_forward", "--input", "1,2,2", *rest)
    assert "does not accept input [1, 2, 2]: ValueError: this model refuses every input" in err
    err = one_line_error(capsys, command, f"{FIXTURES}:tiny_cnn", *rest)  # 3 x 224 x 224
    assert "does not accept input [3, 224, 224]" in err
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_export_takes_an_import_path_with_its_input(tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    assert main(["export", f"{FIXTURES}:tiny_cnn", "--input", "1,12,12",
                 "--torchscript", str(out)]) == 0
    assert out.is_file() and "max |torchscript - pytorch|" in capsys.readouterr().out


# --- files from a newer compactcnn ------------------------------------------------------------


def test_a_model_file_from_a_newer_version_says_so(tmp_path, capsys):
    io.save(models.create("lenet5"), tmp_path / "now.safetensors")
    newer = with_format(tmp_path / "now.safetensors", tmp_path / "new.safetensors",
                        "compactcnn.model/2")
    expected = (f"{newer} is a model file written by a newer compactcnn (format "
                "compactcnn.model/2; this version reads compactcnn.model/1)")
    for argv in (["table", str(newer)], ["groups", str(newer)],
                 ["compact", str(newer), "--out", str(tmp_path / "c.safetensors")],
                 ["export", str(newer), "--onnx", str(tmp_path / "m.onnx")]):
        assert expected in one_line_error(capsys, *argv), argv
    other = with_format(tmp_path / "now.safetensors", tmp_path / "other.safetensors",
                        "compactcnn.checkpoint/2")  # newer, but of another kind
    assert "is not a compactcnn model file" in one_line_error(capsys, "table", str(other))


def test_a_checkpoint_from_a_newer_version_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(tmp_path / "now.safetensors", {"epoch": 1})
    with_format(tmp_path / "now.safetensors", run / CHECKPOINT, "compactcnn.checkpoint/12")
    err = one_line_error(capsys, "train", "--data", "synthetic", "--out", str(run), "--resume")
    assert ("a checkpoint written by a newer compactcnn (format compactcnn.checkpoint/12; "
            "this version reads compactcnn.checkpoint/1)") in err
    with pytest.raises(CompactCNNError, match="newer compactcnn"):
        checkpoint.load(run / CHECKPOINT)


# --- train --config and report ----------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    (None, "is a folder, not a TOML file"),
    ("momentum = -1\n", "momentum must be >= 0, got -1"),
    ("epochs = 0\n", "epochs must be >= 1, got 0"),
    ("lam = \"big\"\n", "lam must be a float, got 'big'"),
    ("colour = 1\n", "unknown option(s) colour"),
    ("epochs = [\n", "is not valid TOML"),
])
def test_train_refuses_a_bad_config(tmp_path, capsys, text, message):
    config = tmp_path / "run.toml"
    config.mkdir() if text is None else config.write_text(text)
    out = tmp_path / "run"
    err = one_line_error(capsys, "train", "--config", str(config), "--data", "synthetic",
                         "--out", str(out))
    assert message in err
    assert not out.exists(), "a refused configuration leaves no run folder"


def test_a_diverging_run_says_what_to_change_in_one_line(tmp_path, capsys):
    """The hint names what to change, not a default already in effect: the warm-up (one
    epoch by default) was the advice when there was none, and on a 2,000-image slice (15
    steps an epoch) LeNet at the default lr still diverged with it."""
    code = main(["train", "--data", "synthetic", "--limit", "1024", "--reg", "none", "--epochs",
                 "1", "--lr", "1e6", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err  # the progress bar's lines, then the error's
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("compactcnn: error: "), err
    assert "the loss became nan" in last or "the loss became inf" in last, last
    assert "lower --lr" in last and "warm the learning rate up for longer" in last, last


@pytest.mark.parametrize("content", ['{"model": "lenet5"}', "[1, 2]", '"report"', "{}"])
def test_report_refuses_json_that_is_not_a_report(tmp_path, capsys, content):
    (tmp_path / "report.json").write_text(content)
    assert "is JSON but not a compactcnn report" in one_line_error(capsys, "report",
                                                                    str(tmp_path))


# --- the fuzz test: every subcommand, its options, configs and import paths --------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand, read from the parser, so that a new one is fuzzed without a change
    here."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# Options that keep a training run that the fuzzer reaches small: FIRST can be overridden by
# what the fuzzer draws, LAST always wins (argparse keeps the last value).
FIRST = {"--data": "synthetic", "--model": "mlp", "--epochs": "1", "--batch-size": "8",
         "--methods": "uniform"}
LAST = {"--limit": "16", "--test-limit": "8", "--workers": "0"}
IMPORTS = [f"{FIXTURES}:tiny_cnn", f"{FIXTURES}:tiny_mlp_bn", f"{FIXTURES}:broken",
           f"{FIXTURES}:fails_forward", f"{FIXTURES}:missing", "no_such_module_xyz:build",
           "os:getcwd", "a:b", ":", "torch.nn:Identity"]
INTS = ["0", "1", "2", "-1"]  # small: --epochs and --finetune-epochs may draw them
FLOATS = ["0", "1e-3", "0.5", "1", "-1", "1e9", "nan", "inf"]
WORDS = ["lenet5", "mlp", "nosuch", "1,12,12", "1,28,28", "1,4,4", "1,3,3", "3,x,1", "conv1=3",
         "fc4=1", "0=2", "cpu", "cuda", "auto", "synthetic", "folder:", "/dev/null/x", "", "\x00"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[str]:
    """Model files good, garbage and newer; run folders; configs garbage, bad and good."""
    d = tmp_path_factory.mktemp("fuzz")
    io.save(models.create("lenet5"), d / "lenet.safetensors")
    with_format(d / "lenet.safetensors", d / "newer.safetensors", "compactcnn.model/3")
    (d / "garbage.safetensors").write_bytes(bytes(range(256)) * 4)
    (d / "pickle.pt").write_bytes(pickle.dumps({"a": 1}))
    run = d / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes((d / "lenet.safetensors").read_bytes())
    (run / "report.json").write_text('{"model": "lenet5"}')
    (d / "empty").mkdir()
    configs = {"good.toml": 'model = "mlp"\nepochs = 1\nlam = 1e-3\n',
               "momentum.toml": "momentum = -1\n", "type.toml": 'epochs = "one"\n',
               "unknown.toml": "colour = 1\n", "broken.toml": "epochs = [\n",
               "models.toml": 'model = "nosuch"\n', "reg.toml": 'reg = "l7"\n'}
    for name, text in configs.items():
        (d / name).write_text(text)
    (d / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    names = ["lenet.safetensors", "newer.safetensors", "garbage.safetensors", "pickle.pt",
             "run", "empty", "binary.toml", "gone.safetensors", "fresh/", "out.onnx", *configs]
    return [str(d / n) for n in names]


def command_lines(name: str, paths: list[str]) -> st.SearchStrategy[list[str]]:
    """``name`` with its positionals, its required options and up to four more, each with a
    value of its type most of the time and anything at all otherwise."""
    parser = subcommands()[name]
    positionals = [a for a in parser._actions if not a.option_strings]
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    anything = st.sampled_from([*paths, *IMPORTS, *FLOATS, *WORDS]) | st.text(max_size=4)

    def value(action: argparse.Action) -> st.SearchStrategy[str]:
        if action.choices:
            likely = st.sampled_from([str(c) for c in action.choices])
        else:
            likely = st.sampled_from({int: INTS, float: FLOATS}.get(action.type,
                                                                     [*paths, *IMPORTS, *WORDS]))
        return st.one_of(likely, likely, likely, likely, anything)

    def pair(action: argparse.Action) -> st.SearchStrategy[list[str]]:
        flag = st.sampled_from(action.option_strings)
        if action.nargs == 0:
            return st.tuples(flag).map(list)
        return st.tuples(flag, value(action)).map(list)

    known = {s for a in options for s in a.option_strings}
    first = [t for k, v in FIRST.items() if k in known for t in (k, v)]
    last = [t for k, v in LAST.items() if k in known for t in (k, v)]
    drawn = st.tuples(st.tuples(*(value(a) for a in positionals)),
                      st.tuples(*(pair(a) for a in options if a.required)),
                      st.lists(st.sampled_from(options).flatmap(pair), max_size=4))
    return drawn.map(lambda t: [name, *first, *t[0], *(x for p in (*t[1], *t[2]) for x in p),
                                *last])


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_fuzzed_subcommands_exit_0_or_2_and_never_give_a_traceback(name, paths, capsys,
                                                                    tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out lands there
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow,
                                     HealthCheck.function_scoped_fixture])
    @given(command_lines(name, paths))
    def fuzz(argv: list[str]) -> None:
        try:
            code = main(argv)
        except SystemExit as e:  # --help
            code = e.code
        _, err = capsys.readouterr()
        assert code in (0, 2), (argv, err)
        assert "Traceback" not in err, (argv, err)
        if code == 2:
            assert err.splitlines()[-1].startswith("compactcnn: error: "), (argv, err)

    fuzz()


# Never --out: a run this reaches would train on the full default data set.
TOKENS = ["lenet5", "mlp", "nosuch", "--input", "1,28,28", "--remove", "conv1=3", "--classes",
          "-1", "--dtype", "int4", "--json", "/dev/null/x", "--strict", "--force", "", "\x00",
          "runs/none", "a:b", "os:getcwd", "--config", "--help"]


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from([*subcommands(), *TOKENS]), st.text(max_size=6)),
                max_size=6))
def test_fuzzed_command_lines_never_give_a_traceback(tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)  # whatever a command writes, it writes there
    try:
        code = main(argv)
    except SystemExit as e:  # --help
        code = e.code
    assert code in (0, 2)


@pytest.mark.parametrize("argv", [["train", "--out", "\x00"], ["table", "lenet5\x00"],
                                  ["compare", "--target", "params=0.1", "--out", "a\x00b"]])
def test_a_nul_byte_in_an_argument_gets_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NUL" in err
