"""A run's configuration: TOML file first, then the command line on top."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compactcnn.errors import CompactCNNError
from compactcnn.training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CompactCNNError(f"no config file {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CompactCNNError(f"{path} is not valid TOML: {str(e).splitlines()[0]}") from None
    unknown = sorted(set(data) - set(TrainConfig.keys()))
    if unknown:
        raise CompactCNNError(f"{path}: unknown option(s) {', '.join(unknown)}; known: "
                              + ", ".join(TrainConfig.keys()))
    return {k.replace("-", "_"): v for k, v in data.items()}


def config_from(args: argparse.Namespace) -> TrainConfig:
    values = read_toml(args.config) if args.config else {}
    for key in TrainConfig.keys():
        given = getattr(args, key, None)
        if given is not None:
            values[key] = given
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise CompactCNNError(f"bad configuration: {e}") from None
