"""Checks shared by the tests that drive the command line or interrupt a run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

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
