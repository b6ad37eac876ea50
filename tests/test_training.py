"""The training configuration, TOML files, and the learning-rate schedule."""

from __future__ import annotations

import argparse

import pytest
import torch

from compactcnn import CompactCNNError
from compactcnn.cli import build_parser
from compactcnn.files import checkpoint
from compactcnn.run.config import TrainConfig
from compactcnn.run.optimizers import schedule
from compactcnn.run.toml import config_from


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "--out", "runs/x", *argv])


def test_toml_options_apply_and_the_command_line_wins(tmp_path) -> None:
    f = tmp_path / "run.toml"
    f.write_text('model = "vgg_small"\nlam = 2e-3\nepochs = 4\nlr-warmup-epochs = 1.0\n')
    cfg = config_from(parse("--config", str(f), "--epochs", "7"))
    assert (cfg.model, cfg.lam, cfg.epochs, cfg.lr_warmup_epochs) == ("vgg_small", 2e-3, 7, 1.0)


@pytest.mark.parametrize("text, message", [('colour = "red"\n', "unknown option"),
                                           ("lam = [\n", "not valid TOML"),
                                           ('epochs = "ten"\n', "epochs")])
def test_bad_toml_is_one_clear_error(tmp_path, text, message) -> None:
    f = tmp_path / "run.toml"
    f.write_text(text)
    with pytest.raises(CompactCNNError, match=message):
        config_from(parse("--config", str(f)))


def test_missing_toml_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CompactCNNError, match="no config file"):
        config_from(parse("--config", str(tmp_path / "none.toml")))


@pytest.mark.parametrize("field, value", [("reg", "l0"), ("optimizer", "lbfgs"), ("epochs", 0),
                                          ("lam", -1.0), ("lr", 0.0), ("batch_size", 0)])
def test_bad_values_are_refused(field, value) -> None:
    with pytest.raises(CompactCNNError):
        TrainConfig(**{field: value})


def test_lr_warms_up_linearly_then_decays_and_survives_a_checkpoint(tmp_path) -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = schedule(opt, steps=20, warmup=5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.1)
    assert lrs[:6] == sorted(lrs[:6]) and lrs[5:] == sorted(lrs[5:], reverse=True)
    checkpoint.save(tmp_path / "c.safetensors", {"o": opt.state_dict(), "s": sched.state_dict()})
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = schedule(opt2, steps=20, warmup=5)
    state = checkpoint.load(tmp_path / "c.safetensors")  # in the order resume() uses
    opt2.load_state_dict(state["o"])
    sched2.load_state_dict(state["s"])
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
