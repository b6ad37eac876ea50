"""Model files that load without unpickling anything, written atomically.

A model file is one safetensors file: the tensors, plus JSON metadata saying how to build the
model, and the width of every layer. A compacted model's widths match no constructor default,
so loading builds the model and then narrows each layer to the recorded widths before adopting
the tensors. A factorised model also differs in structure: the ``structure`` entry names each
layer that a pair of layers replaced (``{"fc3": "factorised"}``), and loading rebuilds those
pairs first, so that the widths of their halves (``fc3.first``, ``fc3.second``) narrow them
like any layer. Files without the entry (all those written before factorisation existed) have
no replaced layers.

How to build the model is one of two specs. A zoo model's names the zoo entry and its
constructor arguments (``{"name": "lenet5", "num_classes": 10, ...}``). A model from an
import path (``compactcnn train --model pkg.module:callable``) names the path, the keyword
arguments it was called with (``num_classes`` or none) and its input shape
(``{"import": "pkg.module:callable", "kwargs": {"num_classes": 10}, "input": [1, 28, 28]}``).
Loading such a file imports that module and calls it: the user's own code, trusted as when
they named it on the command line. Nothing stored in the file is executed; and so that a file
from elsewhere cannot choose what code runs, loading passes no argument but ``num_classes``
and refuses standard-library modules (none builds a model).
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from compactcnn import models
from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
from compactcnn.files.atomic import atomic_write
from compactcnn.files.safetensors_file import read_safetensors
from compactcnn.layers import kind_of
from compactcnn.layers.factorised import Factorised

FORMAT = "compactcnn.model/1"

# Modules that replace a zoo layer with a different structure, by the name files record, and
# how to build one in place of the zoo's layer (at any size: the recorded widths follow).
_STRUCTURES: dict[str, tuple[type[nn.Module], Callable[[nn.Module], nn.Module]]] = {
    "factorised": (Factorised, lambda layer: Factorised.like(layer, rank=1)),
}


def spec_of(model: nn.Module) -> dict[str, Any]:
    """How ``model`` was built: what :func:`compactcnn.models.create` or :func:`from_import`
    recorded on it, so that a file can say how to build it again."""
    spec = getattr(model, "compactcnn_spec", None)
    if spec is None:
        raise CompactCNNError("only models built by compactcnn.models.create or from an import "
                              "path (package.module:callable) can be saved")
    return dict(spec)


def input_shape(spec: dict[str, Any]) -> tuple[int, int, int]:
    """The (C, H, W) input a spec records: square for the zoo, any shape for an import path."""
    if "import" in spec:
        c, h, w = spec["input"]
        return c, h, w
    return spec["in_channels"], spec["input_size"], spec["input_size"]


def from_import(path: str, shape: tuple[int, int, int], num_classes: int | None = None
                ) -> nn.Module:
    """The module that the callable at ``package.module:callable`` returns, marked with how it
    was built, so that it can be saved and loaded like a zoo model.

    ``num_classes=`` is passed when given and the callable takes it (a parameter of that name,
    or ``**kwargs``); otherwise it is called with no arguments and the caller checks the
    outputs. ``shape`` is recorded, not checked: it is the input that loading runs the model
    at. Importing and calling run the user's code, so any exception of theirs becomes one line
    that names the import path.
    """
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        kwargs = ({"num_classes": num_classes}
                  if num_classes is not None and _takes_num_classes(factory) else {})
        model = factory(**kwargs)
    except Exception as e:
        # The usual cause: the module is the user's own, in a folder Python does not search.
        hint = (" (install it, or add its folder to PYTHONPATH)"
                if isinstance(e, ModuleNotFoundError) and e.name
                and f"{module_name}.".startswith(f"{e.name}.") else "")
        raise CompactCNNError(f"cannot build a model from '{path}': {first_line(e)}{hint}"
                              ) from None
    if not isinstance(model, nn.Module):
        raise CompactCNNError(f"'{path}' returned a {type(model).__name__}, not an nn.Module")
    model.compactcnn_spec = {"import": path, "kwargs": kwargs, "input": list(shape)}
    return model


def _takes_num_classes(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # not callable, or a builtin without a signature: the
        return False                 # call itself says what is wrong
    return any(p.kind is p.VAR_KEYWORD or (p.name == "num_classes" and p.kind in
                                            (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               for p in parameters)


def first_line(e: BaseException) -> str:
    """An exception of the user's code as one line: its type and the first line of its text."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def encode(model: nn.Module, extra: dict | None = None) -> bytes:
    """The bytes of a model file (see :func:`save`)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "spec": json.dumps(spec_of(model)),
            "widths": json.dumps(_widths(model)), "structure": json.dumps(_structure(model)),
            "extra": json.dumps(extra or {})}
    return st_save(tensors, metadata=meta)


def save(model: nn.Module, path: str | Path, extra: dict | None = None) -> None:
    """Save a model from the zoo or an import path, compacted or not, to one safetensors
    file."""
    atomic_write(path, encode(model, extra))


def looks_like_file(name: str) -> bool:
    """Whether a model named on the command line is meant as a model file: an existing file,
    or a name with a suffix that is neither a folder nor an import path (``pkg.mod:fn``), so
    that a missing file gets "no such file" rather than "unknown model"."""
    path = Path(name)
    return path.is_file() or (":" not in name and bool(path.suffix) and not path.is_dir())


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a model file, refusing anything else with a clear error."""
    meta, tensors = read_safetensors(path, FORMAT, "model file")
    try:
        parsed = {k: json.loads(meta[k]) for k in ("spec", "widths", "extra")}
        parsed["structure"] = json.loads(meta.get("structure", "{}"))
    except (KeyError, json.JSONDecodeError):
        raise CompactCNNError(f"{path} has corrupt compactcnn metadata") from None
    return parsed, tensors


def load(path: str | Path) -> nn.Module:
    """Rebuild the model saved at ``path``, in eval mode.

    The result is checked before it is returned: every layer's tensors match its recorded
    widths, and one forward pass at the recorded input size runs.
    """
    meta, tensors = read(path)
    model = _build(path, meta["spec"])
    try:
        widths = meta["widths"]
        if not isinstance(widths, dict):
            raise ValueError("the widths must be a JSON object")
        _rebuild(model, meta["structure"])
        _narrow(model, widths)
        _adopt(model, tensors)
        _check(model)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError, IndexError) as e:
        raise CompactCNNError(f"{path} does not describe a valid model: {e}") from None
    return model.eval()


def _build(path: str | Path, spec: Any) -> nn.Module:
    """The model a spec describes, at its constructor's widths."""
    try:
        if not isinstance(spec, dict):
            raise ValueError("the spec must be a JSON object")
        if "import" not in spec:
            spec = dict(spec)
            return models.create(spec.pop("name"), **spec)
        source, shape, num_classes = _import_spec(spec)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError, IndexError) as e:
        raise CompactCNNError(f"{path} does not describe a valid model: {e}") from None
    try:
        return from_import(source, shape, num_classes)
    except CompactCNNError as e:
        raise CompactCNNError(f"{path} was saved from an import path: {e}") from None


def _import_spec(spec: dict[str, Any]) -> tuple[str, tuple[int, int, int], int | None]:
    """(import path, input shape, num_classes) of an import spec, or ValueError.

    Only what :func:`from_import` records is accepted, so that a file cannot pass the callable
    arguments of its own choosing, nor name a standard-library module (none builds a model,
    and some, such as ``os`` or ``pdb``, have callables that harm or hang).
    """
    if set(spec) != {"import", "kwargs", "input"}:
        raise ValueError(f"an import spec has the keys import, kwargs and input, got "
                         f"{sorted(spec)}")
    source, kwargs, shape = spec["import"], spec["kwargs"], spec["input"]
    if not isinstance(source, str) or ":" not in source:
        raise ValueError(f"the import path must be package.module:callable, got {source!r}")
    if source.partition(":")[0].partition(".")[0] in sys.stdlib_module_names:
        raise ValueError(f"{source!r} is in the standard library, which builds no model")
    if not isinstance(kwargs, dict) or set(kwargs) - {"num_classes"} or not all(
            type(v) is int and v > 0 for v in kwargs.values()):
        raise ValueError(f"the kwargs may only be a positive num_classes, got {kwargs!r}")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(type(v) is int and v > 0 for v in shape)):
        raise ValueError(f"the input must be three positive integers C, H, W, got {shape!r}")
    c, h, w = shape
    return source, (c, h, w), kwargs.get("num_classes")


def _rebuild(model: nn.Module, structure: dict[str, str]) -> None:
    """Put the recorded replacements in place of the zoo's layers, before any narrowing."""
    if not isinstance(structure, dict):
        raise ValueError("the structure must be a JSON object")
    for name, kind in structure.items():
        if kind not in _STRUCTURES:
            raise ValueError(f"{name!r} has unknown structure {kind!r}")
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, _STRUCTURES[kind][1](getattr(owner, child)))


def _narrow(model: nn.Module, widths: dict[str, dict[str, int]]) -> None:
    modules = dict(model.named_modules())
    for name, w in widths.items():
        m = modules[name]
        if not isinstance(w, dict) or not all(type(v) is int and v > 0 for v in w.values()):
            raise ValueError(f"widths of {name!r} must be positive integers, got {w!r}")
        kind = kind_of(m)
        if kind is None:
            raise ValueError(f"{name!r} is not a layer with widths")
        kind.narrow(m, w)


def _adopt(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Take every tensor of the file, whatever its shape; refuse missing or unknown keys."""
    expected = set(model.state_dict())
    if missing := expected - tensors.keys():
        raise ValueError(f"missing tensors {sorted(missing)[:3]}")
    modules = dict(model.named_modules())
    for key, value in tensors.items():
        owner, _, attr = key.rpartition(".")
        m = modules.get(owner)
        if m is None:
            raise ValueError(f"unknown tensor {key!r}")
        if attr in m._buffers:
            m._buffers[attr] = value
        elif attr in m._parameters:
            m._parameters[attr] = nn.Parameter(value, requires_grad=value.is_floating_point())
        else:
            raise ValueError(f"unknown tensor {key!r}")


def _check(model: nn.Module) -> None:
    """Every layer's tensors agree with its widths, and the model runs at its input size."""
    for name, m in model.named_modules():
        kind = kind_of(m)
        if kind is None:
            continue
        try:
            shapes = kind.shapes(m)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        for attr, want in shapes.items():
            _shape(name, attr, getattr(m, attr), want)
    shape = input_shape(spec_of(model))
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *shape, dtype=dtype))
    except Exception as e:  # the forward pass of a model from an import path is user code
        raise ValueError(f"it does not run at its input {list(shape)}: {first_line(e)}"
                         ) from None


def _shape(name: str, attr: str, t: torch.Tensor | None, want: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != tuple(want):
        raise ValueError(f"{name}.{attr} has shape {list(t.shape)}, its widths say {list(want)}")


def _structure(model: nn.Module) -> dict[str, str]:
    """The modules that replaced a zoo layer, by name, with the structure each has."""
    return {name: kind for name, m in model.named_modules()
            for kind, (cls, _) in _STRUCTURES.items() if isinstance(m, cls)}


def _widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """Every layer's widths, as its kind records them (kinds without widths are left out)."""
    out = {}
    for name, m in model.named_modules():
        kind = kind_of(m)
        if kind is not None and (w := kind.widths(m)):
            out[name] = w
    return out
