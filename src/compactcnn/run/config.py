"""A run's configuration: every option that decides its result, checked when it is made.

Each field carries its own help text (and choices, where there are some) as metadata, so the
command line and the TOML reader are built from this one declaration and repeat nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from compactcnn.errors import CompactCNNError
from compactcnn.sparsity.penalties import PENALTIES

OPTIMIZERS = ("sgd", "adam")


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A configuration field with the help text and choices the command line shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result; a resumed run must match it exactly."""

    model: str = option("lenet5", "zoo name")
    data: str = option("fashion-mnist", "fashion-mnist, folder:PATH or synthetic")
    data_dir: str | None = option(None, "another copy of the Fashion-MNIST IDX files")
    reg: str = option("group", "the sparse constraint", tuple(PENALTIES))
    lam: float = option(3e-4, "penalty weight")
    lam1: float = option(0.0, "l1 weight of sparse-group")
    epochs: int = option(12, "epochs of (sparse) training")
    finetune_epochs: int = option(0, "train the compact model N more epochs")
    optimizer: str = option("sgd", "the base optimizer", OPTIMIZERS)
    lr: float | None = option(None, "learning rate (0.05 for sgd, 1e-3 for adam)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "L2 weight decay")
    batch_size: int = option(128, "global batch size")
    seed: int = option(0, "seed of initialisation, split and batch order")
    limit: int | None = option(None, "use only the first N training images")
    test_limit: int | None = option(None, "use only the first N test images")
    val_fraction: float = option(0.1, "share of the training images held out for validation")
    augment: bool = option(False, "random crops and flips")
    warmup_epochs: float = option(0.0, "ramp lam from 0 over these epochs")
    lr_warmup_epochs: float = option(0.0, "ramp the learning rate from lr/10 over these epochs")
    min_neurons: int = option(1, "neurons every layer keeps, whatever the penalty")

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise CompactCNNError(f"unknown {f.name} '{getattr(self, f.name)}'; choose one "
                                      f"of: {', '.join(choices)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise CompactCNNError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("finetune_epochs", "seed", "min_neurons"):
            if getattr(self, name) < 0:
                raise CompactCNNError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lam", "lam1", "weight_decay", "warmup_epochs", "lr_warmup_epochs",
                     "momentum"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise CompactCNNError(f"{name} must be >= 0, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise CompactCNNError(f"lr must be > 0, got {self.lr}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.05 if self.optimizer == "sgd" else 1e-3)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def field_type(name: str) -> type:
    """The Python type of a field (``int`` for ``int | None``): what TOML and argparse parse."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return {"str": str, "int": int, "float": float, "bool": bool}[str(f.type).split(" | ")[0]]
