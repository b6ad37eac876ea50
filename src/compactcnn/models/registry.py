"""The name -> constructor table behind `compactcnn.models.create`.

Defaults and the smallest usable input size are declared where each model is registered, so the
CLI, configs and tests read one source of truth instead of repeating per-model numbers.

A model may also declare ``options``: constructor arguments of its own beyond the shared three
(a filter-map model's ``fraction``), with their defaults. They are recorded with the model
(``compactcnn_spec``), so that a model file can rebuild a model built at any of them. A model
that ``reads_pixels`` (a fixed colour histogram) also takes ``normalisation``: the per-channel
mean and std its inputs were normalised by, which it must undo to see pixel values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from compactcnn.errors import CompactCNNError

KEYS = ("num_classes", "in_channels", "input_size")

Builder = Callable[..., nn.Module]
Normalisation = tuple[Sequence[float], Sequence[float]]


@dataclass(frozen=True)
class Entry:
    factory: Builder
    defaults: Mapping[str, int]
    min_input_size: int
    options: Mapping[str, Any]


_TABLE: dict[str, Entry] = {}


def register(
    name: str, defaults: Mapping[str, int], *, min_input_size: int = 1,
    options: Mapping[str, Any] | None = None, reads_pixels: bool = False,
) -> Callable[[Builder], Builder]:
    """Wrap a builder so `None` arguments take the model's defaults and bad values are refused.

    Validation happens here, before any layer is built, so a wrong size is reported as a
    `CompactCNNError` naming the model instead of a shape error from deep inside torch. The
    builder receives the shared three, every option (given or default) and, if it
    ``reads_pixels``, ``normalisation`` (None: inputs are pixel values); it checks the
    options' values itself.
    """
    if set(defaults) != set(KEYS):
        raise ValueError(f"defaults for {name!r} must have exactly the keys {KEYS}")
    if name in _TABLE:
        raise ValueError(f"model {name!r} is registered twice")
    option_defaults = dict(options or {})

    def decorate(builder: Builder) -> Builder:
        def factory(
            *,
            num_classes: int | None = None,
            in_channels: int | None = None,
            input_size: int | None = None,
            normalisation: Normalisation | None = None,
            **given_options: Any,
        ) -> nn.Module:
            unknown = sorted(set(given_options) - set(option_defaults))
            if unknown:
                takes = (f"its options are {', '.join(option_defaults)}" if option_defaults
                         else "it has none")
                raise CompactCNNError(f"{name} has no option {unknown[0]!r}; {takes}")
            given = zip(KEYS, (num_classes, in_channels, input_size), strict=True)
            args = {k: defaults[k] if v is None else v for k, v in given}
            for key, value in args.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise CompactCNNError(
                        f"{name}: {key} must be a positive integer, got {value!r}"
                    )
            if args["input_size"] < min_input_size:
                raise CompactCNNError(
                    f"{name} needs input_size >= {min_input_size}, got {args['input_size']}"
                )
            pixels = {"normalisation": normalisation} if reads_pixels else {}
            return builder(**args, **(option_defaults | given_options), **pixels)

        factory.__name__ = factory.__qualname__ = builder.__name__
        factory.__doc__ = builder.__doc__
        factory.__module__ = builder.__module__
        _TABLE[name] = Entry(factory, dict(defaults), min_input_size, option_defaults)
        return factory

    return decorate


def names() -> list[str]:
    """Sorted, so listings and error messages read the same on every run."""
    return sorted(_TABLE)


def lookup(name: str) -> Entry:
    """Fetch a model's entry; an unknown name is a user error that lists the valid ones."""
    try:
        return _TABLE[name]
    except KeyError:
        raise CompactCNNError(
            f"unknown model {name!r}; choose one of: {', '.join(names())}"
        ) from None
