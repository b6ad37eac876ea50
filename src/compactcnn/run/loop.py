"""The training loop: proximal training, atomic checkpoints, exact resume, fine-tuning.

A run is a folder. After every epoch the loop writes ``checkpoint.safetensors`` (atomically),
so a crash at any moment loses at most one epoch, and ``--resume`` continues to the very
same weights an uninterrupted run would reach: each epoch's batch order depends only on
(seed, epoch), and the checkpoint holds the optimizer, the schedule and the RNG state.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from compactcnn.accounting.accuracy import evaluate
from compactcnn.data.loaders import epoch_loader
from compactcnn.data.splits import Splits
from compactcnn.errors import CompactCNNError
from compactcnn.run.config import TrainConfig
from compactcnn.run.device import model_device
from compactcnn.run.distributed import SINGLE, global_means, rank_loader, share_loss
from compactcnn.run.optimizers import base_optimizer, batches_per_epoch, schedule
from compactcnn.run.rundir import CHECKPOINT
from compactcnn.run.session import Progress, Session, live_neurons, save_checkpoint


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
        tqdm.write("stopping after this batch (Ctrl-C again to stop at once)", file=sys.stderr)

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
              show: bool = True,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
              ) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy) on the training batches.

    With a ``progress`` from an interrupted pass, its first ``progress.batches`` batches are
    skipped: the loader yields the same batches in the same order, so the pass continues
    exactly where it stopped. Under torchrun ``loss_fn`` is ``distributed.share_loss``.
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
        loss = loss_fn(out, y)
        if not torch.isfinite(loss):
            raise CompactCNNError(f"{desc}: the loss became {loss.item()}; lower --lr or --lam, "
                                  "or warm the learning rate up for longer (--lr-warmup-epochs; "
                                  "with a small --limit an epoch is few steps); the last good "
                                  "checkpoint is kept")
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


def train(session: Session, run_dir: Path, until: int | None = None) -> Session:
    """Train from where ``session`` stands to epoch ``until`` (default: the configured epochs).

    A checkpoint is written after every epoch, and on Ctrl-C after the current batch, and
    then KeyboardInterrupt is raised for the caller to report.
    """
    cfg = session.cfg

    def status() -> str:
        live = live_neurons(session)
        return f"live {sum(live.values())}" if live else ""

    world = session.world
    loss_fn = share_loss(world, cfg.label_smoothing)
    # Under torchrun a Ctrl-C reaches the ranks at different batches, and a rank that stops
    # early would leave the others waiting in an all-reduce: there it simply ends the run.
    with _StopOnSigint() if not world.active else nullcontext(_NEVER) as sigint:
        while session.epoch < (cfg.epochs if until is None else until):
            e = session.epoch
            loader = (rank_loader(session.splits.train, cfg.batch_size, cfg.seed, e, world,
                                  cfg.augment, session.workers)
                      if world.active else
                      epoch_loader(session.splits.train, cfg.batch_size, cfg.seed, e,
                                   cfg.augment, session.workers))
            try:
                loss, acc = run_epoch(session.net, session.optimizer, session.scheduler,
                                      loader, f"epoch {e + 1}/{cfg.epochs}", status,
                                      session.progress, lambda: sigint.requested,
                                      show=world.is_main, loss_fn=loss_fn)
            except Interrupted:
                save_checkpoint(session, run_dir / CHECKPOINT)
                raise KeyboardInterrupt from None
            if world.active:  # each rank saw its share: report the global batches' figures
                loss, acc = global_means(loss, acc, session.progress.seen,
                                         model_device(session.model))
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
                           f"val {val_acc:.4f}  {status()}", file=sys.stderr)
    return session


def train_compact(model: nn.Module, splits: Splits, cfg: TrainConfig, first_epoch: int,
                  restart: bool) -> list[dict[str, Any]]:
    """Train the compact network from epoch ``first_epoch`` to the configured epochs.

    The learning rate follows the run's own schedule from where the sparse phase left it, so
    the run is one schedule whatever the method; with ``restart`` (a network trained from
    scratch) it starts that schedule at step 0, warm-up included. The batches are the epochs'
    own, as if the run had never changed networks.
    """
    per_epoch = batches_per_epoch(splits.train, cfg.batch_size)
    optimizer = base_optimizer(cfg, model)
    epochs = cfg.epochs - first_epoch
    done = 0 if restart else first_epoch * per_epoch
    scheduler = schedule(optimizer, (done + epochs * per_epoch),
                         round(cfg.lr_warmup_epochs * per_epoch))
    for _ in range(done):  # the schedule's position: arithmetic only, no training
        optimizer.step()
        scheduler.step()
    loss_fn = share_loss(SINGLE, cfg.label_smoothing)
    history = []
    for e in range(first_epoch, cfg.epochs):
        loader = epoch_loader(splits.train, cfg.batch_size, cfg.seed, e, cfg.augment)
        start = time.perf_counter()
        loss, acc = run_epoch(model, optimizer, scheduler, loader, f"epoch {e + 1}/{cfg.epochs}",
                              loss_fn=loss_fn)
        val_loss, val_acc = evaluate(model, splits.val)
        history.append({"epoch": e + 1, "loss": loss, "accuracy": acc, "val_loss": val_loss,
                        "val_accuracy": val_acc, "seconds": time.perf_counter() - start})
        tqdm.write(f"epoch {e + 1}/{cfg.epochs} (compact)  loss {loss:.4f}  acc {acc:.4f}  "
                   f"val {val_acc:.4f}", file=sys.stderr)
    return history


def finetune(model: nn.Module, splits: Splits, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Plain training of the compact model at a tenth of the learning rate."""
    if cfg.finetune_epochs == 0:
        return []
    base = base_optimizer(replace(cfg, lr=cfg.learning_rate / 10), model)
    steps = cfg.finetune_epochs * batches_per_epoch(splits.train, cfg.batch_size)
    scheduler = schedule(base, steps)
    loss_fn = share_loss(SINGLE, cfg.label_smoothing)
    history = []
    for e in range(cfg.finetune_epochs):
        loader = epoch_loader(splits.train, cfg.batch_size, cfg.seed + 1, e, cfg.augment)
        loss, acc = run_epoch(model, base, scheduler, loader,
                              f"fine-tune {e + 1}/{cfg.finetune_epochs}", loss_fn=loss_fn)
        _, val_acc = evaluate(model, splits.val)
        history.append({"epoch": e + 1, "loss": loss, "accuracy": acc, "val_accuracy": val_acc})
        tqdm.write(f"fine-tune {e + 1}/{cfg.finetune_epochs}  loss {loss:.4f}  acc {acc:.4f}  "
                   f"val {val_acc:.4f}", file=sys.stderr)
    return history
