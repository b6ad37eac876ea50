"""Where a model named on the command line comes from: the zoo, a model file, or an import.

Each source also says what input the model expects, so that a command can trace it without
the user repeating what the source already knows. Every model comes back in eval mode and
known to accept that input, so that no command meets a failing forward pass deep inside
its own work.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from compactcnn import models
from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
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
            input_shape: tuple[int, int, int] | None = None, device: str = "cpu"
            ) -> tuple[nn.Module, tuple[int, int, int], str]:
    """The model, its input shape (C, H, W) and a display name, for a zoo name, file or import.

    The model is in eval mode: the commands look at it, compact or export it, and none trains
    it, so BatchNorm uses its running statistics and a batch of one is enough. ``device="meta"``
    gives a model with shapes but no storage, for commands that only trace shapes, so that an
    input of any size costs no memory.

    A file or import path is tried first only when it looks like one, so that a typo in a zoo
    name gets the list of valid names rather than "no such file".
    """
    path = Path(name)
    if ":" in name and not path.exists():
        model, shape = _imported(name, classes, input_shape)
        return _accepting(model.to(device), shape, name, device), shape, name
    # A folder is never a model file; one that happens to share a zoo name leaves the zoo
    # model reachable.
    if path.is_dir() and name not in models.names():
        raise CompactCNNError(f"{name} is a folder, not a model file")
    if path.is_file() or (path.suffix and not path.is_dir()):
        model = modelfile.load(name).to(device)
        spec = modelfile.spec_of(model)
        recorded = (spec["in_channels"], spec["input_size"], spec["input_size"])
        shape = input_shape or recorded
        if shape != recorded:  # loading checked the recorded input size only
            _accepting(model, shape, path.name, device)
        return model.eval(), shape, path.name
    d = models.defaults(name)
    if input_shape:
        c, h, w = input_shape
        if h != w:
            raise CompactCNNError(f"zoo models take square inputs, got {h}x{w}")
        d.update(in_channels=c, input_size=h)
    if classes is not None:
        d["num_classes"] = classes
    with torch.device(device):  # the registry refuses an input too small for the model
        model = models.create(name, **d)
    return model.eval(), (d["in_channels"], d["input_size"], d["input_size"]), name


def _imported(path: str, classes: int | None, input_shape: tuple[int, int, int] | None
              ) -> tuple[nn.Module, tuple[int, int, int]]:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        model = factory(num_classes=classes) if classes is not None else factory()
    except Exception as e:  # an import path runs the user's code: any failure is theirs
        raise CompactCNNError(f"cannot build a model from '{path}': {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise CompactCNNError(f"'{path}' returned a {type(model).__name__}, not an nn.Module")
    return model, input_shape or (3, 224, 224)


def _accepting(model: nn.Module, shape: tuple[int, int, int], name: str, device: str
               ) -> nn.Module:
    """``model`` in eval mode, after one forward pass at ``shape`` on ``device``.

    Any exception counts, not only torch's shape errors: the forward pass may be the user's
    code. Zeros on the meta device allocate nothing, whatever the shape.
    """
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
    except Exception as e:
        raise CompactCNNError(f"{name} does not accept input {list(shape)}: "
                              f"{_first_line(e)}") from None
    return model.eval()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
