"""Binary model files: a model file's float latent weights, plus which layers are binary.

A binarised model has the same tensors as the float model it came from (a binary layer keeps
float latent weights and computes with their signs), so the file is a model file in all but
its format name, with one more metadata entry naming the binary layers and whether each
binarises its input. Loading rebuilds the float model through :mod:`compactcnn.files.modelfile`,
with every check that makes, and then swaps the named layers for binary ones.

The format has its own name (``compactcnn.binary/1``) so that commands reading model files
refuse it, rather than silently run its latent weights as a float network.
Nothing in the file is ever executed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import nn

from compactcnn.deploy.binary import binarize_layers, binary_layers
from compactcnn.errors import CompactCNNError
from compactcnn.files import modelfile
from compactcnn.files.atomic import atomic_write
from compactcnn.files.safetensors_file import read_safetensors

FORMAT = "compactcnn.binary/1"
_KIND = "binary model file"


def save_binary(model: nn.Module, path: str | Path) -> None:
    """Write a binarised zoo model (see :func:`compactcnn.deploy.binary.binarize_model`)."""
    layers = binary_layers(model)
    if not layers:
        raise CompactCNNError("the model has no binary layer; save it as a model file")
    meta, tensors = _through_model_file(model)
    atomic_write(path, st_save(tensors, metadata={
        "format": FORMAT, "model": json.dumps(meta), "binary": json.dumps(layers)}))


def load_binary(path: str | Path) -> nn.Module:
    """Rebuild the binarised model saved at ``path``, in eval mode."""
    meta, tensors = read_safetensors(path, FORMAT, _KIND)
    try:
        model_meta, layers = json.loads(meta["model"]), json.loads(meta["binary"])
        if not (isinstance(model_meta, dict) and isinstance(layers, dict) and layers
                and all(isinstance(v, bool) for v in layers.values())):
            raise ValueError
    except (KeyError, ValueError):
        raise CompactCNNError(f"{path} has corrupt {_KIND} metadata") from None
    with tempfile.TemporaryDirectory() as tmp:
        float_file = Path(tmp) / Path(path).name
        float_file.write_bytes(st_save(tensors, metadata=model_meta))
        try:
            model = modelfile.load(float_file)
        except CompactCNNError as e:  # name the user's file, not the temporary one
            raise CompactCNNError(str(e).replace(str(float_file), str(path))) from None
    try:
        return binarize_layers(model, layers).eval()
    except (AttributeError, ValueError) as e:
        raise CompactCNNError(f"{path} names binary layers the model lacks: {e}") from None


def _through_model_file(model: nn.Module) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of ``model`` as a model file: the latent weights are the float
    model's own, so the model-file writer records them, and its metadata, unchanged."""
    with tempfile.TemporaryDirectory() as tmp:
        float_file = Path(tmp) / "model.safetensors"
        modelfile.save(model, float_file)
        return read_safetensors(float_file, modelfile.FORMAT, "model file")
