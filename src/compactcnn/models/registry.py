"""The name -> constructor table behind `compactcnn.models.create`.

Defaults and the smallest usable input size are declared where each model is registered, so the
CLI, configs and tests read one source of truth instead of repeating per-model numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from compactcnn.errors import CompactCNNError

KEYS = ("num_classes", "in_channels", "input_size")

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Entry:
    factory: Builder
    defaults: Mapping[str, int]
    min_input_size: int


_TABLE: dict[str, Entry] = {}


def register(
    name: str, defaults: Mapping[str, int], *, min_input_size: int = 1
) -> Callable[[Builder], Builder]:
    """Wrap a builder so `None` arguments take the model's defaults and bad values are refused.

    Validation happens here, before any layer is built, so a wrong size is reported as a
    `CompactCNNError` naming the model instead of a shape error from deep inside torch.
    """
    if set(defaults) != set(KEYS):
        raise ValueError(f"defaults for {name!r} must have exactly the keys {KEYS}")
    if name in _TABLE:
        raise ValueError(f"model {name!r} is registered twice")

    def decorate(builder: Builder) -> Builder:
        def factory(
            *,
            num_classes: int | None = None,
            in_channels: int | None = None,
            input_size: int | None = None,
        ) -> nn.Module:
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
            return builder(**args)

        factory.__name__ = factory.__qualname__ = builder.__name__
        factory.__doc__ = builder.__doc__
        factory.__module__ = builder.__module__
        _TABLE[name] = Entry(factory, dict(defaults), min_input_size)
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
