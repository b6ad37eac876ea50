"""Where a model named on the command line comes from: the zoo, a model file, or an import.

Each source also says what input the model expects, so that a command can trace it without
the user repeating what the source already knows.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from compactcnn import models
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile


def parse_input(text: str) -> tuple[int, int, int]:
    """``"3,227,227"`` -> ``(3, 227, 227)``."""
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3 or not all(p.strip().isascii() and p.strip().isdigit() and int(p) > 0
                                  for p in parts):
        raise CompactCNNError(f"malformed --input '{text}': expected C,H,W such as 3,227,227")
    c, h, w = (int(p) for p in parts)
    return c, h, w


def resolve(name: str, *, classes: int | None = None,
            input_shape: tuple[int, int, int] | None = None
            ) -> tuple[nn.Module, tuple[int, int, int], str]:
    """The model, its input shape (C, H, W) and a display name, for a zoo name, file or import.

    A file or import path is tried first only when it looks like one, so that a typo in a zoo
    name gets the list of valid names rather than "no such file".
    """
    path = Path(name)
    if ":" in name and not path.exists():
        return _imported(name, classes, input_shape)
    # A folder is never a model file; one that happens to share a zoo name leaves the zoo
    # model reachable.
    if path.is_dir() and name not in models.names():
        raise CompactCNNError(f"{name} is a folder, not a model file")
    if path.is_file() or (path.suffix and not path.is_dir()):
        model = modelfile.load(name)
        spec = modelfile.spec_of(model)
        shape = input_shape or (spec["in_channels"], spec["input_size"], spec["input_size"])
        return model, shape, Path(name).name
    d = models.defaults(name)
    if input_shape:
        c, h, w = input_shape
        if h != w:
            raise CompactCNNError(f"zoo models take square inputs, got {h}x{w}")
        d.update(in_channels=c, input_size=h)
    if classes is not None:
        d["num_classes"] = classes
    model = models.create(name, **d)
    return model, (d["in_channels"], d["input_size"], d["input_size"]), name


def _imported(path: str, classes: int | None, input_shape) -> tuple:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        model = factory(num_classes=classes) if classes is not None else factory()
    except Exception as e:  # an import path runs the user's code: any failure is theirs
        raise CompactCNNError(f"cannot build a model from '{path}': "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                              ) from None
    if not isinstance(model, nn.Module):
        raise CompactCNNError(f"'{path}' returned a {type(model).__name__}, not an nn.Module")
    return model, input_shape or (3, 224, 224), path
