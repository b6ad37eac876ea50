"""Model files that load without unpickling anything, written atomically.

A model file is one safetensors file: the tensors, plus JSON metadata naming the zoo model,
its constructor arguments, and the width of every layer. A compacted model's widths match
no constructor default, so loading builds the zoo model and then narrows each layer to the
recorded widths before adopting the tensors. A factorised model also differs in structure:
the ``structure`` entry names each zoo layer that a pair of layers replaced (``{"fc3":
"factorised"}``), and loading rebuilds those pairs first, so that the widths of their halves
(``fc3.first``, ``fc3.second``) narrow them like any layer. Files without the entry (all those
written before factorisation existed) have no replaced layers. Nothing in the file is ever
executed.
"""

from __future__ import annotations

import json
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
    """The zoo name and constructor arguments that :func:`compactcnn.models.create` recorded."""
    spec = getattr(model, "compactcnn_spec", None)
    if spec is None:
        raise CompactCNNError("only models built by compactcnn.models.create can be saved")
    return dict(spec)


def encode(model: nn.Module, extra: dict | None = None) -> bytes:
    """The bytes of a model file (see :func:`save`)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "spec": json.dumps(spec_of(model)),
            "widths": json.dumps(_widths(model)), "structure": json.dumps(_structure(model)),
            "extra": json.dumps(extra or {})}
    return st_save(tensors, metadata=meta)


def save(model: nn.Module, path: str | Path, extra: dict | None = None) -> None:
    """Save a zoo model, compacted or not, to one safetensors file."""
    atomic_write(path, encode(model, extra))


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
    try:
        spec, widths = meta["spec"], meta["widths"]
        if not isinstance(spec, dict) or not isinstance(widths, dict):
            raise ValueError("the spec and the widths must be JSON objects")
        spec = dict(spec)
        model = models.create(spec.pop("name"), **spec)
        _rebuild(model, meta["structure"])
        _narrow(model, widths)
        _adopt(model, tensors)
        _check(model)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError, IndexError) as e:
        raise CompactCNNError(f"{path} does not describe a valid model: {e}") from None
    return model.eval()


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
    spec = spec_of(model)
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    x = torch.zeros(1, spec["in_channels"], spec["input_size"], spec["input_size"], dtype=dtype)
    with eval_mode(model), torch.no_grad():
        model(x)


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
