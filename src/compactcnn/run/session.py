"""A run's session: the objects a checkpoint restores, how they are built, saved and resumed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactcnn.data.splits import Splits, load_dataset
from compactcnn.errors import CompactCNNError, ConfigMismatch
from compactcnn.files import checkpoint as checkpoint_file
from compactcnn.methods import Context
from compactcnn.run.budgeted import attach
from compactcnn.run.config import TrainConfig, differences
from compactcnn.run.distributed import SINGLE, World, wrap
from compactcnn.run.optimizers import base_optimizer, batches_per_epoch, schedule
from compactcnn.sources import for_training
from compactcnn.sparsity.groups import neuron_groups
from compactcnn.sparsity.penalties import make_penalty
from compactcnn.sparsity.proximal import ProximalOptimizer


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
    forward: nn.Module | None = None  # the DistributedDataParallel wrapper (distributed.wrap)
    workers: int = 0  # loader processes; the batches do not depend on it
    ctx: Context | None = None  # the method's, for a run with a budget

    @property
    def net(self) -> nn.Module:
        """What the training steps call: the model, or its DDP wrapper."""
        return self.forward or self.model


def build(cfg: TrainConfig, device: torch.device | str = "cpu", world: World = SINGLE
          ) -> Session:
    """A fresh session; the device is not part of the configuration (a run may move)."""
    torch.manual_seed(cfg.seed)
    splits = load_dataset(cfg.data, data_dir=Path(cfg.data_dir) if cfg.data_dir else None,
                          val_fraction=cfg.val_fraction, limit=cfg.limit,
                          test_limit=cfg.test_limit, seed=cfg.seed)
    model = for_training(cfg.model, splits, cfg.input).to(device)
    per_epoch = batches_per_epoch(splits.train, cfg.batch_size)
    base = base_optimizer(cfg, model)
    penalty = make_penalty(cfg.reg, cfg.lam, cfg.lam1, cfg.lam_rank, cfg.reweight)
    if penalty is not None:
        groups = neuron_groups(model, splits.train[:1][0].to(device))
        base = ProximalOptimizer(base, groups, penalty,
                                 warmup_steps=round(cfg.warmup_epochs * per_epoch),
                                 min_neurons=cfg.min_neurons)
    ctx = attach(model, base, cfg, splits) if cfg.budget is not None else None
    scheduler = schedule(base, cfg.epochs * per_epoch, round(cfg.lr_warmup_epochs * per_epoch))
    return Session(cfg, splits, model, base, scheduler, [], world=world,
                   forward=wrap(model, world), ctx=ctx)


def save_checkpoint(session: Session, path: Path) -> None:
    checkpoint_file.save(path, {
        "config": asdict(session.cfg), "epoch": session.epoch, "history": session.history,
        "progress": asdict(session.progress),
        "model": session.model.state_dict(), "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(), "rng": torch.get_rng_state(),
        # dropout on a GPU draws from the CUDA generators: a resume there must restore them too
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "method": {k: v.state_dict() for k, v in session.ctx.state.items()}
        if session.ctx else {}})


def resume(cfg: TrainConfig, path: Path, device: torch.device | str = "cpu",
           world: World = SINGLE) -> Session:
    """Rebuild the session of ``cfg`` and restore it from the checkpoint at ``path``."""
    state = checkpoint_file.load(path)
    diff = differences(state.get("config", {}), cfg)
    if diff:
        raise ConfigMismatch(f"{path} was written by another configuration (differs in: "
                              f"{'; '.join(diff)}); start a new --out or use the same options")
    session = build(cfg, device, world)
    try:
        session.model.load_state_dict(state["model"])
        session.optimizer.load_state_dict(state["optimizer"])
        session.scheduler.load_state_dict(state["scheduler"])
        for key, value in state.get("method", {}).items():
            session.ctx.state[key].load_state_dict(value)
    except (RuntimeError, KeyError, ValueError, AttributeError) as e:
        raise CompactCNNError(f"{path} does not fit this model: {str(e).splitlines()[0]}"
                              ) from None
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    session.history = state["history"]
    session.epoch = state["epoch"]
    session.progress = Progress(**state["progress"])
    return session


def live_neurons(session: Session) -> dict[str, int]:
    """Live neurons per group right now (none listed for the dense baseline)."""
    if session.ctx is not None:
        return {g.name: g.size - int(g.dead().sum()) for g in session.ctx.groups}
    if isinstance(session.optimizer, ProximalOptimizer):
        return {k: live for k, (live, _) in session.optimizer.neuron_counts().items()}
    return {}


@dataclass
class Progress:
    """How far the current epoch has got: what a mid-epoch checkpoint must remember."""

    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
