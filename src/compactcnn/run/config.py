"""A run's configuration: every option that decides its result, checked when it is made.

Each field carries its own help text (and choices, where there are some) as metadata, so the
command line and the TOML reader are built from this one declaration and repeat nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from compactcnn.errors import CompactCNNError
from compactcnn.methods import METHODS, OURS
from compactcnn.methods.balance import BALANCES
from compactcnn.methods.budget import Budget
from compactcnn.sources import parse_input
from compactcnn.sparsity.penalties import GROUP_TERM, PENALTIES

OPTIMIZERS = ("sgd", "adam")

# What a run made before the option existed had in effect, where that is not the option's
# default: a budget run's group term is reweighted by default since session 8, and was not.
_BEFORE_IT_EXISTED: dict[str, Any] = {"reweight": 0.0}


def differences(recorded: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Each option in which ``cfg`` differs from the configuration a run recorded, with both
    values. Options added since the run was written count as what it had in effect, so that
    a file an older compactcnn wrote compares like with like instead of being refused."""
    before = {f.name: _BEFORE_IT_EXISTED.get(f.name, f.default) for f in fields(TrainConfig)}
    recorded, now = {**before, **recorded}, asdict(cfg)
    try:  # resolved as this version resolves a configuration: lam, say, where it does nothing
        recorded |= asdict(TrainConfig(**{k: recorded[k] for k in TrainConfig.keys()}))
    except (CompactCNNError, TypeError, ValueError):
        pass  # not a configuration this version can make: compared as written
    return [f"{k} ({recorded.get(k)!r} in the recorded run, {now.get(k)!r} now)"
            for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]


def _default_reg(target: str | None) -> str:
    """The penalty a run gets when it names none. A budget run adds the nuclear norm beside
    the group term: over three seeds each of lenet5 (14 epochs) and vgg_small (4 epochs), at
    10% and 5% of the parameters, it led plain group sparsity on 11 runs of 12 (by +0.07,
    +0.31, +0.13 and -0.02 points on the four means; README, *Results*). A run with lam as
    given stays the paper's group lasso."""
    return "group+low-rank" if target is not None else "group"


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A configuration field with the help text and choices the command line shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result; a resumed run must match it exactly."""

    model: str = option("lenet5", "zoo name, package.module:callable (given num_classes= "
                        "if it takes it), or a model file whose weights the run starts from")
    data: str = option("fashion-mnist", "fashion-mnist, folder:PATH, synthetic or "
                       "synthetic-colour")
    data_dir: str | None = option(None, "another copy of the Fashion-MNIST IDX files")
    reg: str | None = option(None, "the sparse constraint (default: group+low-rank with "
                             "--target, group without)", tuple(PENALTIES))
    lam: float | None = option(None, "penalty weight (with --target, where lam starts; default "
                               "3e-4 for a budget run's group term, 1e-4 under both budgets "
                               "with per-metric, 3e-5 otherwise)")
    lam1: float = option(0.0, "l1 weight of sparse-group")
    lam_rank: float | None = option(None, "nuclear-norm weight of group+low-rank (default "
                                    "3e-5 there; 0 for the other penalties, which have none)")
    reweight: float | None = option(None, "reweight the group term: each neuron's threshold "
                                    "times (its layer's mean live norm / its norm) ** R; 0: "
                                    "plain group lasso (default: 1 with --target, 0 without); "
                                    "ignored by runs without a group term")
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
    label_smoothing: float = option(0.0, "label smoothing of the training loss, in [0, 1), in "
                                    "every phase; validation and test figures stay plain "
                                    "cross-entropy and accuracy")
    warmup_epochs: float = option(0.0, "ramp lam from 0 over these epochs")
    lr_warmup_epochs: float = option(1.0, "ramp the learning rate from lr/10 over these epochs "
                                     "(Caffe's LeNet, without normalisation, diverges without it)")
    min_neurons: int = option(1, "neurons every layer keeps, whatever the penalty (at least 1 "
                              "with --target)")
    method: str | None = option(None, "how the network is made compact (default: the --reg "
                                "penalty with --lam as given)", tuple(METHODS))
    target: str | None = option(None, "the budget: params=F and/or flops=F, e.g. params=0.10")
    prune_fraction: float = option(0.5, "with --target: the share of the epochs spent reaching "
                                   "it; the compact network trains for the rest")
    widths: str | None = option(None, "scratch: the live neurons of each layer, LAYER=N,...")
    input: str | None = option(None, "input shape C,H,W: the data give it; if given, it must "
                               "match them")
    balance: str | None = option(None, "with --target: how lam is shared between layers: by "
                                 "what a neuron owns (none), by what removing it saves "
                                 "(sqrt-cost, cost), or each metric of a joint budget by its "
                                 "own rule under its own multiplier (per-metric) (default: none "
                                 "for params, sqrt-cost for flops, per-metric for both)",
                                 BALANCES)
    compact_lr: str = option("continue", "with --target: the compact network's learning rate "
                             "continues the run's schedule, or restarts it over the epochs left",
                             ("continue", "restart"))

    def __post_init__(self) -> None:
        if self.input is not None:
            parse_input(self.input)
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in (*choices, None):
                raise CompactCNNError(f"unknown {f.name} '{getattr(self, f.name)}'; choose one "
                                      f"of: {', '.join(choices)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise CompactCNNError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("finetune_epochs", "seed", "min_neurons"):
            if getattr(self, name) < 0:
                raise CompactCNNError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lam", "lam1", "lam_rank", "reweight", "weight_decay", "warmup_epochs",
                     "lr_warmup_epochs", "momentum"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise CompactCNNError(f"{name} must be >= 0, got {value}")
        if not 0 <= self.label_smoothing < 1:
            raise CompactCNNError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise CompactCNNError(f"lr must be > 0, got {self.lr}")
        self._check_method()
        self._resolve_balance()
        self._resolve_reweight()
        self._resolve_lam()

    def _resolve_balance(self) -> None:
        """The configuration says what the run does: ``none`` where no lam controller shares
        lam between layers (no budget, or a method without our penalty); by default each
        metric priced by its own rule: ``none`` under a budget of parameters alone,
        ``sqrt-cost`` under one of FLOPs alone, ``per-metric`` (both, each under its own
        multiplier) under both. Pressed by what a neuron owns, a FLOPs budget spends its lam
        on the fully connected neurons, which own most of the parameters and few of the
        FLOPs: lenet5 at a quarter of the FLOPs kept 14-15-97 neurons (seed 0) and lost 0.65
        points over three seeds to sqrt-cost's 7-24-500; under both budgets one multiplier
        for both left vgg_small at 4.5% of its parameters where 10% was allowed (README, *A
        FLOPs budget, and both budgets at once*). Where the budget counts parameters alone
        ``none`` stays: measured better on lenet5 (README, *Layer balance*)."""
        if self.target is None or self.reg == "none":
            object.__setattr__(self, "balance", "none")
        elif self.balance is None:
            budget = self.budget
            rule = ("per-metric" if budget.joint
                    else "none" if budget.flops is None else "sqrt-cost")
            object.__setattr__(self, "balance", rule)

    def _resolve_reweight(self) -> None:
        """The configuration says what the run does: 0 without a group term to reweight; by
        default 1 for a budget run (measured better on vgg_small by 0.2 to 0.4 points, level
        on lenet5: README, *Reweighting*) and 0 for a run with lam as given (as before)."""
        if self.reg not in GROUP_TERM:
            object.__setattr__(self, "reweight", 0.0)
        elif self.reweight is None:
            object.__setattr__(self, "reweight", 1.0 if self.target is not None else 0.0)

    def _resolve_lam(self) -> None:
        """Where lam starts, said in the configuration: 3e-4 for a budget run whose group term
        is reweighted (better than 3e-5 on vgg_small by 0.23 points, on lenet5 by 0.11, within
        the spread: README, *Reweighting*), 3e-5 otherwise (lam as given, low-rank, a plain
        group lasso, whose lenet5 runs lost 0.14 points at 3e-4). A run without a penalty
        (the dense run, a baseline) has lam 0, whatever was given: otherwise the same run
        recorded the lam of whichever path made it (``train --method l1-filter`` 3e-5, the
        same row of ``compare`` its budget's 3e-4) and one was refused as the other. The
        nuclear norm of ``group+low-rank`` starts at 3e-5 (lenet5, 14 epochs, three seeds: 90.62%
        at 5% of the parameters against the group defaults' 90.31%; README, *lenet5 at 10% and
        5%*); the other penalties have none, so their lam_rank is 0.

        Under both budgets with a multiplier per metric the reweighted group term starts at
        1e-4: the mixed price presses the layers dearest in FLOPs several times harder than
        the mean, and at 3e-4 lenet5's conv1 fell to 4 or 5 filters in the first epoch,
        before the path starts, leaving the FLOPs a quarter unused (README, *One multiplier
        per metric*): lenet5 at ``params=0.10,flops=0.18`` 90.68% against 90.36% over five
        seeds, vgg_small at ``params=0.10,flops=0.10`` 92.06% against 91.94% over three."""
        if self.reg == "none":
            object.__setattr__(self, "lam", 0.0)
        elif self.lam is None:
            if self.target is None or not self.reweight:
                lam = 3e-5
            elif self.balance == "per-metric" and self.budget.joint:
                lam = 1e-4
            else:
                lam = 3e-4
            object.__setattr__(self, "lam", lam)
        if self.reg != "group+low-rank":
            object.__setattr__(self, "lam_rank", 0.0)
        elif self.lam_rank is None:  # at 0 it would be plain group sparsity under another name
            object.__setattr__(self, "lam_rank", 3e-5)

    def _check_method(self) -> None:
        """A method of ours sets the penalty; a baseline trains without one; either way the
        configuration ends up saying what the run does, so a resumed run compares equal."""
        if not 0 < self.prune_fraction <= 1:
            raise CompactCNNError(f"prune_fraction must be in (0, 1], got {self.prune_fraction}")
        if self.target is not None:
            Budget.parse(self.target)
            if self.min_neurons < 1:
                # The budget prices a layer whose every neuron died as gone, but compaction
                # keeps one neuron of it, so the compact network would not be the one priced.
                raise CompactCNNError("a budget run keeps at least one neuron per layer: "
                                      "--min-neurons must be >= 1 with --target")
        if self.widths is not None:
            parse_widths(self.widths)
        if self.reg is None:
            object.__setattr__(self, "reg", _default_reg(self.target))
        if self.method is None:
            if self.target is not None and self.reg == "none":
                raise CompactCNNError("a target needs a method: choose --method (or --reg)")
            return
        object.__setattr__(self, "reg", self.method if self.method in OURS else "none")
        if self.target is None:
            raise CompactCNNError(f"method {self.method} needs a budget: add --target, e.g. "
                                  "params=0.10")

    @property
    def budget(self) -> Budget | None:
        return Budget.parse(self.target) if self.target is not None else None

    @property
    def method_name(self) -> str:
        """The method this run uses: the one named, or the penalty's."""
        return self.method or self.reg

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


def parse_widths(text: str) -> dict[str, int]:
    """``"conv1=12,conv2=20"`` -> ``{"conv1": 12, "conv2": 20}``."""
    out = {}
    for part in text.split(","):
        layer, sep, n = part.strip().partition("=")
        if not sep or not layer or not (n.isascii() and n.isdigit() and int(n) > 0):
            raise CompactCNNError(f"malformed widths '{text}': expected LAYER=N,..., e.g. "
                                  "conv1=12,conv2=20")
        out[layer] = int(n)
    return out
