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
from compactcnn.evalmode import eval_mode

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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, a read-only folder: the old file stands
            raise CompactCNNError(f"cannot write {path}: {e.strerror or e}") from None
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


def read_safetensors(path: str | Path, fmt: str, kind: str
                     ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file of format ``fmt``; anything else, a pickle
    included, is refused with one line that names ``kind``. Nothing is executed."""
    path = Path(path)
    if not path.is_file():
        raise CompactCNNError(f"no such {kind}: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CompactCNNError(f"{path} is not a compactcnn {kind} "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    if meta.get("format") != fmt:
        raise CompactCNNError(f"{path} is not a compactcnn {kind} (format {meta.get('format')!r}, "
                              f"expected {fmt!r})")
    return meta, tensors


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a model file, refusing anything else with a clear error."""
    meta, tensors = read_safetensors(path, FORMAT, "model file")
    try:
        parsed = {k: json.loads(meta[k]) for k in ("spec", "widths", "extra")}
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
        _narrow(model, widths)
        _adopt(model, tensors)
        _check(model)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError, IndexError) as e:
        raise CompactCNNError(f"{path} does not describe a valid model: {e}") from None
    return model.eval()


def _narrow(model: nn.Module, widths: dict[str, dict[str, int]]) -> None:
    modules = dict(model.named_modules())
    for name, w in widths.items():
        m = modules[name]
        if not isinstance(w, dict) or not all(type(v) is int and v > 0 for v in w.values()):
            raise ValueError(f"widths of {name!r} must be positive integers, got {w!r}")
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


def _check(model: nn.Module) -> None:
    """Every layer's tensors agree with its widths, and the model runs at its input size."""
    for name, m in model.named_modules():
        if isinstance(m, _CONV):
            if m.in_channels % m.groups or m.out_channels % m.groups:
                raise ValueError(f"{name}: {m.in_channels} inputs and {m.out_channels} "
                                 f"neurons do not split into {m.groups} groups")
            want = (m.out_channels, m.in_channels // m.groups, *m.kernel_size)
            _shape(name, "weight", m.weight, want)
            _shape(name, "bias", m.bias, (m.out_channels,))
        elif isinstance(m, nn.Linear):
            _shape(name, "weight", m.weight, (m.out_features, m.in_features))
            _shape(name, "bias", m.bias, (m.out_features,))
        elif isinstance(m, _NORM):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                _shape(name, attr, getattr(m, attr), (m.num_features,))
    spec = spec_of(model)
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    x = torch.zeros(1, spec["in_channels"], spec["input_size"], spec["input_size"], dtype=dtype)
    with eval_mode(model), torch.no_grad():
        model(x)


def _shape(name: str, attr: str, t: torch.Tensor | None, want: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != tuple(want):
        raise ValueError(f"{name}.{attr} has shape {list(t.shape)}, its widths say {list(want)}")
