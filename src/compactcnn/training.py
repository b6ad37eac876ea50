"""The training loop: proximal training, atomic checkpoints, exact resume, fine-tuning.

A run is a folder. After every epoch the loop writes ``checkpoint.safetensors`` (atomically),
so a crash at any moment loses at most one epoch, and ``--resume`` continues to the very
same weights an uninterrupted run would reach: each epoch's batch order depends only on
(seed, epoch), and the checkpoint holds the optimizer, the schedule and the RNG state.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from compactcnn import checkpoint, models
from compactcnn.data import Splits, epoch_loader, load_dataset, make_loader
from compactcnn.distributed import SINGLE, World, rank_loader
from compactcnn.errors import CompactCNNError
from compactcnn.evalmode import eval_mode
from compactcnn.groups import neuron_groups
from compactcnn.optim import ProximalOptimizer
from compactcnn.penalties import GroupLasso, LowRank, SparseGroupLasso

REGULARISERS = ("none", "group", "sparse-group", "low-rank")
CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result; a resumed run must match it exactly."""

    model: str = "lenet5"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    reg: str = "group"
    lam: float = 3e-4
    lam1: float = 0.0
    epochs: int = 12
    finetune_epochs: int = 0
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    limit: int | None = None
    test_limit: int | None = None
    val_fraction: float = 0.1
    augment: bool = False
    warmup_epochs: float = 0.0
    lr_warmup_epochs: float = 0.0
    min_neurons: int = 1

    def __post_init__(self) -> None:
        if self.reg not in REGULARISERS:
            raise CompactCNNError(f"unknown --reg '{self.reg}'; choose one of: "
                                  + ", ".join(REGULARISERS))
        if self.optimizer not in ("sgd", "adam"):
            raise CompactCNNError(f"unknown --optimizer '{self.optimizer}'; choose sgd or adam")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise CompactCNNError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("finetune_epochs", "seed", "min_neurons"):
            if getattr(self, name) < 0:
                raise CompactCNNError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("lam", "lam1", "weight_decay", "warmup_epochs", "lr_warmup_epochs"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise CompactCNNError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise CompactCNNError(f"--lr must be > 0, got {self.lr}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.05 if self.optimizer == "sgd" else 1e-3)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def penalty_of(cfg: TrainConfig):
    """The proximal map that ``--reg`` names, or None for the dense baseline."""
    if cfg.reg == "group":
        return GroupLasso(cfg.lam)
    if cfg.reg == "sparse-group":
        return SparseGroupLasso(cfg.lam1, cfg.lam)
    if cfg.reg == "low-rank":
        return LowRank(cfg.lam)
    return None


@dataclass
class Session:
    """The objects of one run that a checkpoint restores."""

    cfg: TrainConfig
    splits: Splits
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    history: list[dict[str, Any]]
    epoch: int = 0
    progress: Progress = field(default_factory=lambda: Progress())
    world: World = SINGLE
    forward: nn.Module | None = None  # the DistributedDataParallel wrapper, when launched
    workers: int = 0  # loader processes; the batches do not depend on it

    @property
    def net(self) -> nn.Module:
        """What the training steps call: the model, or its DDP wrapper."""
        return self.forward or self.model


def pick_device(name: str = "cpu") -> torch.device:
    """``auto`` takes CUDA when there is one; asking for CUDA without one is bad input."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CompactCNNError(f"--device {name}: this machine has no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CompactCNNError(f"unknown --device '{name}'; use cpu, cuda or auto") from None


def build(cfg: TrainConfig, device: torch.device | str = "cpu", world: World = SINGLE
          ) -> Session:
    """A fresh session; the device is not part of the configuration (a run may move)."""
    torch.manual_seed(cfg.seed)
    splits = load_dataset(cfg.data, data_dir=Path(cfg.data_dir) if cfg.data_dir else None,
                          val_fraction=cfg.val_fraction, limit=cfg.limit,
                          test_limit=cfg.test_limit, seed=cfg.seed)
    c, h, w = splits.input_shape
    if h != w:
        raise CompactCNNError(f"{cfg.data} has {h}x{w} images; the zoo takes square inputs")
    model = models.create(cfg.model, num_classes=splits.num_classes, in_channels=c,
                          input_size=h).to(device)
    per_epoch = _batches(splits.train, cfg.batch_size)
    base = _base_optimizer(cfg, model)
    penalty = penalty_of(cfg)
    if penalty is not None:
        groups = neuron_groups(model, splits.train[:1][0].to(device))
        base = ProximalOptimizer(base, groups, penalty,
                                 warmup_steps=round(cfg.warmup_epochs * per_epoch),
                                 min_neurons=cfg.min_neurons)
    scheduler = schedule(base, cfg.epochs * per_epoch, round(cfg.lr_warmup_epochs * per_epoch))
    forward = None
    if world.active:
        if cfg.augment:
            raise CompactCNNError("--augment is not supported with torchrun yet")
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[model_device(model)] if model_device(model).type == "cuda"
            else None)
    return Session(cfg, splits, model, base, scheduler, [], world=world, forward=forward)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0
             ) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay over ``steps``, after a linear warm-up from lr/10 over ``warmup`` steps.

    The warm-up keeps a network without normalisation (Caffe's LeNet) from diverging in
    its first steps at a learning rate it trains well with afterwards.
    """
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps - warmup, 1))
    if warmup <= 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def _base_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay)


def _batches(dataset: Dataset, batch_size: int) -> int:
    return math.ceil(len(dataset) / batch_size)


def live_neurons(session: Session) -> dict[str, int]:
    """Live neurons per group right now (all of them for the dense baseline)."""
    if isinstance(session.optimizer, ProximalOptimizer):
        return {k: live for k, (live, _) in session.optimizer.neuron_counts().items()}
    return {}


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode."""
    device = model_device(model)
    loss, correct, seen = 0.0, 0, 0
    with eval_mode(model), torch.no_grad():
        for x, y in make_loader(dataset, batch_size, shuffle=False, seed=0):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
    return loss / max(seen, 1), correct / max(seen, 1)


@dataclass
class Progress:
    """How far the current epoch has got: what a mid-epoch checkpoint must remember."""

    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


class _StopOnSigint:
    """The first Ctrl-C asks the loop to stop after the current batch; a second stops now.

    Stopping between batches means the checkpoint never holds a half-applied step.
    """

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this batch (Ctrl-C again to stop at once)")

    def __enter__(self) -> _StopOnSigint:
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class _Never:
    requested = False


_NEVER = _Never()


class Interrupted(Exception):
    """Raised by :func:`run_epoch` when a stop was requested; ``Progress`` says where."""


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler, loader: DataLoader,
              desc: str, status: Callable[[], str] = lambda: "",
              progress: Progress | None = None,
              stop: Callable[[], bool] = lambda: False,
              show: bool = True) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy) on the training batches.

    With a ``progress`` from an interrupted pass, its first ``progress.batches`` batches are
    skipped: the loader yields the same batches in the same order, so the pass continues
    exactly where it stopped.
    """
    model.train()
    device = model_device(model)
    p = progress or Progress()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
               disable=not show)
    for k, (x, y) in enumerate(bar):
        if k < p.batches:
            continue
        start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        if not torch.isfinite(loss):
            raise CompactCNNError(f"{desc}: the loss became {loss.item()}; lower --lr or --lam, "
                                  "or add --lr-warmup-epochs 1 (the last good checkpoint is kept)")
        loss.backward()
        optimizer.step()
        scheduler.step()
        p.batches += 1
        p.loss_sum += loss.item() * len(y)
        p.correct += (out.argmax(1) == y).sum().item()
        p.seen += len(y)
        p.seconds += time.perf_counter() - start
        bar.set_postfix_str(f"loss {p.loss_sum / p.seen:.3f} acc {p.correct / p.seen:.3f} "
                            f"{status()}", refresh=False)
        if stop():
            raise Interrupted
    for param in model.parameters():
        if not torch.isfinite(param).all():
            raise CompactCNNError(f"{desc}: a weight became NaN or inf; lower --lr or --lam "
                                  "(the last good checkpoint is kept)")
    return p.loss_sum / max(p.seen, 1), p.correct / max(p.seen, 1)


def train(session: Session, run_dir: Path) -> Session:
    """Train from where ``session`` stands to the configured number of epochs.

    A checkpoint is written after every epoch, and on Ctrl-C after the current batch, and
    then KeyboardInterrupt is raised for the caller to report.
    """
    cfg = session.cfg

    def status() -> str:
        live = live_neurons(session)
        return f"live {sum(live.values())}" if live else ""

    world = session.world
    # Under torchrun a Ctrl-C reaches the ranks at different batches, and a rank that stops
    # early would leave the others waiting in an all-reduce: there it simply ends the run.
    with _StopOnSigint() if not world.active else nullcontext(_NEVER) as sigint:
        while session.epoch < cfg.epochs:
            e = session.epoch
            loader = (rank_loader(session.splits.train, cfg.batch_size, cfg.seed, e, world)
                      if world.active else
                      epoch_loader(session.splits.train, cfg.batch_size, cfg.seed, e,
                                   cfg.augment, session.workers))
            try:
                loss, acc = run_epoch(session.net, session.optimizer, session.scheduler,
                                      loader, f"epoch {e + 1}/{cfg.epochs}", status,
                                      session.progress, lambda: sigint.requested,
                                      show=world.is_main)
            except Interrupted:
                save_checkpoint(session, run_dir / CHECKPOINT)
                raise KeyboardInterrupt from None
            start = time.perf_counter()
            val_loss, val_acc = evaluate(session.model, session.splits.val)
            session.history.append({
                "epoch": e + 1, "loss": loss, "accuracy": acc, "val_loss": val_loss,
                "val_accuracy": val_acc, "live": live_neurons(session),
                "seconds": session.progress.seconds + time.perf_counter() - start})
            session.epoch, session.progress = e + 1, Progress()
            if world.is_main:
                save_checkpoint(session, run_dir / CHECKPOINT)
                tqdm.write(f"epoch {e + 1}/{cfg.epochs}  loss {loss:.4f}  acc {acc:.4f}  "
                       f"val {val_acc:.4f}  {status()}")
    return session


def finetune(model: nn.Module, splits: Splits, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Plain training of the compact model at a tenth of the learning rate."""
    if cfg.finetune_epochs == 0:
        return []
    base = _base_optimizer(replace(cfg, lr=cfg.learning_rate / 10), model)
    steps = cfg.finetune_epochs * _batches(splits.train, cfg.batch_size)
    scheduler = schedule(base, steps)
    history = []
    for e in range(cfg.finetune_epochs):
        loader = epoch_loader(splits.train, cfg.batch_size, cfg.seed + 1, e, cfg.augment)
        loss, acc = run_epoch(model, base, scheduler, loader,
                              f"fine-tune {e + 1}/{cfg.finetune_epochs}")
        _, val_acc = evaluate(model, splits.val)
        history.append({"epoch": e + 1, "loss": loss, "accuracy": acc, "val_accuracy": val_acc})
        tqdm.write(f"fine-tune {e + 1}/{cfg.finetune_epochs}  loss {loss:.4f}  acc {acc:.4f}  "
                   f"val {val_acc:.4f}")
    return history


def save_checkpoint(session: Session, path: Path) -> None:
    checkpoint.save(path, {
        "config": asdict(session.cfg), "epoch": session.epoch, "history": session.history,
        "progress": asdict(session.progress),
        "model": session.model.state_dict(), "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(), "rng": torch.get_rng_state()})


def resume(cfg: TrainConfig, path: Path, device: torch.device | str = "cpu",
           world: World = SINGLE) -> Session:
    """Rebuild the session of ``cfg`` and restore it from the checkpoint at ``path``."""
    state = checkpoint.load(path)
    saved = state.get("config", {})
    if saved != asdict(cfg):
        diff = sorted(k for k in set(saved) | set(asdict(cfg))
                      if saved.get(k) != asdict(cfg).get(k))
        raise CompactCNNError(f"{path} was written by another configuration (differs in: "
                              f"{', '.join(diff)}); start a new --out or use the same options")
    session = build(cfg, device, world)
    try:
        session.model.load_state_dict(state["model"])
        session.optimizer.load_state_dict(state["optimizer"])
        session.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CompactCNNError(f"{path} does not fit this model: {str(e).splitlines()[0]}"
                              ) from None
    torch.set_rng_state(state["rng"])
    session.history = state["history"]
    session.epoch = state["epoch"]
    session.progress = Progress(**state["progress"])
    return session
