"""Model files that load without unpickling anything, written atomically.

A model file is one safetensors file: the tensors, plus JSON metadata naming the zoo model,
its constructor arguments, and the width of every layer. A compacted model's widths match
no constructor default, so loading builds the zoo model and then narrows each layer to the
recorded widths before adopting the tensors. Nothing in the file is ever executed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from compactcnn import models
from compactcnn.errors import CompactCNNError

FORMAT = "compactcnn.model/1"
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``.

    A crash leaves either the old file or the new one, never half of either.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CompactCNNError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def spec_of(model: nn.Module) -> dict[str, Any]:
    """The zoo name and constructor arguments that :func:`compactcnn.models.create` recorded."""
    spec = getattr(model, "compactcnn_spec", None)
    if spec is None:
        raise CompactCNNError("only models built by compactcnn.models.create can be saved")
    return dict(spec)


def _widths(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _CONV):
            out[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, _NORM):
            out[name] = {"out": m.num_features}
    return out


def encode(model: nn.Module, extra: dict | None = None) -> bytes:
    """The bytes of a model file (see :func:`save`)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "spec": json.dumps(spec_of(model)),
            "widths": json.dumps(_widths(model)), "extra": json.dumps(extra or {})}
    return st_save(tensors, metadata=meta)


def save(model: nn.Module, path: str | Path, extra: dict | None = None) -> None:
    """Save a zoo model, compacted or not, to one safetensors file."""
    atomic_write(path, encode(model, extra))


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a model file, refusing anything else with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CompactCNNError(f"no such model file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CompactCNNError(f"{path} is not a compactcnn model file "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    if meta.get("format") != FORMAT:
        raise CompactCNNError(f"{path} is not a compactcnn model file (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    try:
        parsed = {k: json.loads(meta[k]) for k in ("spec", "widths", "extra")}
    except (KeyError, json.JSONDecodeError):
        raise CompactCNNError(f"{path} has corrupt compactcnn metadata") from None
    return parsed, tensors


def load(path: str | Path) -> nn.Module:
    """Rebuild the model saved at ``path``, in eval mode."""
    meta, tensors = read(path)
    spec = dict(meta["spec"])
    try:
        model = models.create(spec.pop("name"), **spec)
        _narrow(model, meta["widths"])
        _adopt(model, tensors)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as e:
        raise CompactCNNError(f"{path} does not describe a valid model: {e}") from None
    return model.eval()


def _narrow(model: nn.Module, widths: dict[str, dict[str, int]]) -> None:
    modules = dict(model.named_modules())
    for name, w in widths.items():
        m = modules[name]
        if isinstance(m, _CONV):
            m.in_channels, m.out_channels, m.groups = w["in"], w["out"], w["groups"]
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = w["in"], w["out"]
        elif isinstance(m, _NORM):
            m.num_features = w["out"]


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
