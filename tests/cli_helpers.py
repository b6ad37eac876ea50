"""Checks shared by the tests that drive the command line or interrupt a run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compactcnn.cli import main
from compactcnn.run import loop


def one_line_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The error line of ``argv``, after checking that it is the only output."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("compactcnn: error: "), err
    return err


def interrupt_second_epoch(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make the next run's second epoch raise KeyboardInterrupt (as Ctrl-C would) before it
    trains; returns the function that puts the real epoch back, for the resumed run."""
    real, calls = loop.run_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "run_epoch", interrupted)
    return lambda: monkeypatch.setattr(loop, "run_epoch", real)


def assert_resume_equals_whole(train: Callable[..., int], root: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture, *args: str) -> None:
    """``train(out, *args)`` interrupted in its second epoch and resumed gives the sparse
    model of the same run left alone, tensor for tensor."""
    whole, parts = root / "whole", root / "parts"
    assert train(whole, *args) == 0
    restore = interrupt_second_epoch(monkeypatch)
    assert train(parts, *args) == 130
    assert "--resume" in capsys.readouterr().err
    restore()
    assert train(parts, *args, "--resume") == 0
    a, b = load_file(whole / "sparse.safetensors"), load_file(parts / "sparse.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
