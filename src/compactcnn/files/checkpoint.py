"""Training checkpoints: model, optimizer and loop state in one safetensors file, no pickle.

Optimizer and scheduler states are nested dicts of numbers and tensors. They are split into
a JSON skeleton, where each tensor is replaced by a reference, and the tensors themselves,
so a checkpoint from an untrusted source can be read without running anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from compactcnn.errors import CompactCNNError
from compactcnn.files.atomic import atomic_write
from compactcnn.files.safetensors_file import read_safetensors

FORMAT = "compactcnn.checkpoint/1"


_REF = "__tensor__"


def _pack(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {_REF: path}
    if isinstance(obj, dict):
        return {"__dict__": [[_pack(k, tensors, f"{path}.k{i}"), _pack(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and _REF in obj:
        return tensors[obj[_REF]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts/lists of numbers, strings and tensors) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(state, tensors, "s")
    atomic_write(path, st_save(tensors, metadata={"format": FORMAT,
                                                  "state": json.dumps(skeleton)}))


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; anything else is a clear error."""
    meta, tensors = read_safetensors(path, FORMAT, "checkpoint")
    try:
        return _unpack(json.loads(meta["state"]), tensors)
    except (KeyError, TypeError, ValueError):
        raise CompactCNNError(f"{path} has a corrupt compactcnn checkpoint state") from None
