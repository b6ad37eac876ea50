"""Model zoo: every network the experiments prune, built by name with one calling convention.

A single `create(name, ...)` lets configs and the CLI name a model as a string, and the shared
keyword set (num_classes, in_channels, input_size) lets any model be rebuilt for another data set
without knowing its family. Some models take options of their own (see `options`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

# The family modules are imported for their side effect: registering their models.
from compactcnn.models import (  # noqa: F401
    alexnet,
    filtermap,
    gray_hist,
    lenet,
    mlp,
    resnet,
    resnet_cifar,
    squeezenet,
    vgg,
)
from compactcnn.models.registry import Normalisation, lookup, names

__all__ = ["create", "defaults", "min_input_size", "names", "options"]


def create(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    normalisation: Normalisation | None = None,
    **model_options: Any,
) -> nn.Module:
    """Build a freshly initialised model; arguments left as `None` take the model's defaults.

    ``model_options`` are the model's own (`options(name)`); ``normalisation`` is the
    per-channel (mean, std) the inputs were normalised by, used by models that read pixel
    values (gray_hist's colour histogram) and ignored by the others. Raises `CompactCNNError`
    for an unknown name or option, a bad argument or an input too small for the model's
    downsampling, so callers can report it as a user error.
    """
    entry = lookup(name)
    model = entry.factory(num_classes=num_classes, in_channels=in_channels,
                          input_size=input_size, normalisation=normalisation, **model_options)
    given = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    # Recorded on the model so that a model file can name how to rebuild it, without pickle.
    # The normalisation is not: the model keeps it in buffers, which the file holds.
    model.compactcnn_spec = {"name": name} | {
        k: entry.defaults[k] if v is None else v for k, v in given.items()
    } | dict(entry.options) | model_options
    return model


def defaults(name: str) -> dict[str, int]:
    """The values `create` uses for arguments left as `None` (a copy, safe to modify)."""
    return dict(lookup(name).defaults)


def options(name: str) -> dict[str, Any]:
    """The model's own constructor options and their defaults (most models have none)."""
    return dict(lookup(name).options)


def min_input_size(name: str) -> int:
    """The smallest square input side the model accepts, so callers can pick sizes up front."""
    return lookup(name).min_input_size
