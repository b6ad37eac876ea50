"""What the subcommands share: one-line usage errors, output files that are never clobbered,
and the arguments that name a model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from compactcnn.errors import CompactCNNError

if TYPE_CHECKING:  # torch is imported when a command runs, not for --help
    from torch import nn

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        raise CompactCNNError(f"{self.prog}: {message}")


def fresh_output(path: str, force: bool) -> Path:
    """An output path that does not exist yet (or ``force``), in a folder that does."""
    out = Path(path)
    if out.exists() and not force:
        raise CompactCNNError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise CompactCNNError(f"cannot write {out}: folder {out.parent} does not exist")
    return out


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo name, model file, or package.module:callable")
    add_input_arguments(p)


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """What a model source cannot tell by itself: an import path's input shape and classes."""
    p.add_argument("--input", help="input shape C,H,W (a model file records its own)")
    p.add_argument("--classes", type=int, help="number of classes (zoo and import paths)")


def model_from(args: argparse.Namespace, name: str, device: str = "cpu"
               ) -> tuple[nn.Module, tuple[int, int, int], str]:
    """The model ``name`` names, with the ``--input`` and ``--classes`` of ``args``."""
    from compactcnn.sources import parse_input, resolve

    shape = parse_input(args.input) if args.input is not None else None
    return resolve(name, classes=args.classes, input_shape=shape, device=device)
