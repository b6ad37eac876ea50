"""Where a model named on the command line comes from: the zoo, a model file, or an import.

Each source also says what input the model expects, so that a command can trace it without
the user repeating what the source already knows. Every model comes back in eval mode and
known to accept that input, so that no command meets a failing forward pass deep inside
its own work. A model to train (:func:`for_training`) comes from the zoo or an import path,
checked the same way against the data it will see.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from compactcnn import models
from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
from compactcnn.files import modelfile

if TYPE_CHECKING:
    from compactcnn.data.splits import Splits


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
        shape = input_shape or (3, 224, 224)
        model = modelfile.from_import(name, shape, classes)
        return _accepting(model.to(device), shape, name, device, classes).eval(), shape, name
    # A folder is never a model file; one that happens to share a zoo name leaves the zoo
    # model reachable.
    if path.is_dir() and name not in models.names():
        raise CompactCNNError(f"{name} is a folder, not a model file")
    if modelfile.looks_like_file(name):
        model = modelfile.load(name).to(device)
        recorded = modelfile.input_shape(modelfile.spec_of(model))
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


def for_training(name: str, splits: Splits, declared_input: str | None = None) -> nn.Module:
    """A fresh model, in training mode on the CPU, for the data of ``splits``.

    ``name`` is a zoo name, an import path, or a model file, whose weights the run then starts
    from (to prune a trained or a materialised filter-map network). The data decide the input
    shape and the number of classes, so ``declared_input`` (``--input``) is optional; when
    given it must agree with the data, so that a run never trains on images other than those
    its command names. An import path's or a file's model must run at that shape and give one
    score per class: checked here, with one forward pass, so that a mistake is one line before
    any training rather than a traceback inside it.
    """
    shape, classes = splits.input_shape, splits.num_classes
    if declared_input is not None and parse_input(declared_input) != shape:
        raise CompactCNNError(f"--input {declared_input} does not match the data: "
                              f"{splits.name} has {','.join(map(str, shape))} images")
    if modelfile.looks_like_file(name):
        model, shown = _from_file(name, shape), Path(name).name
    elif ":" not in name:
        c, h, w = shape
        if h != w:
            raise CompactCNNError(f"{splits.name} has {h}x{w} images; zoo models take square "
                                  "inputs (a model from an import path may take any)")
        return models.create(name, num_classes=classes, in_channels=c, input_size=h,
                             normalisation=(splits.mean, splits.std))
    else:
        model, shown = modelfile.from_import(name, shape, classes), name
    model = _accepting(model, shape, shown, "cpu", classes)
    if not any(p.requires_grad for p in model.parameters()):
        raise CompactCNNError(f"{name} has no parameters to train")
    return model.train()


def _from_file(name: str, shape: tuple[int, int, int]) -> nn.Module:
    """The model of a model file, refused if it was made for other images than the data's."""
    model = modelfile.load(name)
    recorded = modelfile.input_shape(modelfile.spec_of(model))
    if recorded != shape:
        raise CompactCNNError(f"{name} was made for {','.join(map(str, recorded))} images; the "
                              f"data have {','.join(map(str, shape))}")
    return model


def _accepting(model: nn.Module, shape: tuple[int, int, int], name: str, device: str,
               classes: int | None = None) -> nn.Module:
    """``model`` after one forward pass at ``shape`` on ``device``, in the mode it was in. The
    pass must give one tensor; with ``classes``, one score per class (a callable that takes
    no ``num_classes`` gives what it gives).

    Any exception counts, not only torch's shape errors: the forward pass may be the user's
    code. Zeros on the meta device allocate nothing, whatever the shape.
    """
    try:
        with eval_mode(model), torch.no_grad():
            out = model(torch.zeros((1, *shape), device=device))
    except Exception as e:
        raise CompactCNNError(f"{name} does not accept input {list(shape)}: "
                              f"{modelfile.first_line(e)}") from None
    if not isinstance(out, torch.Tensor):  # what compaction and export compare
        raise CompactCNNError(f"{name} gives a {type(out).__name__} for one input "
                              f"{list(shape)}; compactcnn needs one tensor of scores")
    if classes is not None and tuple(out.shape) != (1, classes):
        raise CompactCNNError(f"{name} gives {list(out.shape)} for one input {list(shape)}; "
                              f"{classes} classes need [1, {classes}]")
    return model
