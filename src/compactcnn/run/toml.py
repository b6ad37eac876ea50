"""A run's configuration from a TOML file, with the command line on top."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compactcnn.errors import CompactCNNError
from compactcnn.run.config import TrainConfig, field_type

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: str | Path) -> dict:
    """The options of a TOML file, each checked for a known name and the right type."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CompactCNNError(f"no config file {path}") from None
    except IsADirectoryError:
        raise CompactCNNError(f"config {path} is a folder, not a TOML file") from None
    except OSError as e:
        raise CompactCNNError(f"cannot read config {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CompactCNNError(f"{path} is not valid TOML: {str(e).splitlines()[0]}") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(TrainConfig.keys()))
    if unknown:
        raise CompactCNNError(f"{path}: unknown option(s) {', '.join(unknown)}; known: "
                              + ", ".join(TrainConfig.keys()))
    for key, value in data.items():
        _check_type(path, key, value)
    return data


def _check_type(path: Path, key: str, value: object) -> None:
    """TOML has types of its own; refuse a string where a number belongs, say, by name."""
    kind = field_type(key)
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if not ok and not (kind is float and isinstance(value, int) and not isinstance(value, bool)):
        raise CompactCNNError(f"{path}: {key} must be a {kind.__name__}, got {value!r}")


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The TOML file's options (``args.config``), overridden by every option given on the
    command line."""
    values = read_toml(args.config) if args.config else {}
    for key in TrainConfig.keys():
        given = getattr(args, key, None)
        if given is not None:
            values[key] = given
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise CompactCNNError(f"bad configuration: {e}") from None
