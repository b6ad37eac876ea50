"""Loaders whose order (and augmentation) is a pure function of (seed, epoch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from compactcnn.data.common import _check_positive
from compactcnn.errors import CompactCNNError

AUGMENT_PADDING = 2


class _AugmentSampler(Sampler[tuple[int, int, int, bool]]):
    """Yields ``(index, dy, dx, flip)``: the order and each sample's crop/flip, all drawn here.

    Drawing augmentation parameters in the sampler (main process, own generator) rather than in
    workers makes them independent of ``workers`` and of which worker gets which batch.
    """

    def __init__(self, n: int, shuffle: bool, generator: torch.Generator) -> None:
        self.n, self.shuffle, self.generator = n, shuffle, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int, int, bool]]:
        g = self.generator
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        shifts = torch.randint(0, 2 * AUGMENT_PADDING + 1, (self.n, 2), generator=g)
        flips = torch.randint(0, 2, (self.n,), generator=g).bool()
        for i, (dy, dx), flip in zip(order.tolist(), shifts.tolist(), flips.tolist(), strict=True):
            yield i, dy, dx, flip


class _WithAugmentParams(Dataset):
    """Passes the sampler's augmentation parameters through to the collate function."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int, bool]):
        index, dy, dx, flip = key
        image, label = self.base[index]
        return image, label, dy, dx, flip


def _augment_collate(samples: Sequence[tuple]) -> list[torch.Tensor]:
    """Random crop from a zero-padded image plus horizontal flip, for a whole batch at once."""
    images, labels, dy, dx, flip = zip(*samples, strict=True)
    x = torch.stack(images)
    _, _, h, w = x.shape
    p = AUGMENT_PADDING
    padded = F.pad(x, (p, p, p, p))
    rows = torch.tensor(dy)[:, None] + torch.arange(h)  # [B, H]
    cols = torch.tensor(dx)[:, None] + torch.arange(w)  # [B, W]
    batch = torch.arange(len(samples))[:, None, None]
    # Advanced indices separated by a slice move to the front: result is [B, H, W, C].
    cropped = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    out = torch.where(torch.tensor(flip)[:, None, None, None], cropped.flip(-1), cropped)
    return [out.contiguous(), default_collate(labels)]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    augment: bool = False,
    workers: int = 0,
) -> DataLoader:
    """A loader whose randomness comes only from a generator seeded with ``seed``.

    Iterating the same loader again gives a new (but still reproducible) order; for an order
    that depends only on the epoch number, as resuming needs, use :func:`epoch_loader`.
    The generator is passed even without shuffling because DataLoader otherwise draws its
    worker base seed from the global RNG, which would shift every later random draw.
    """
    _check_positive("batch_size", batch_size)
    if workers < 0:
        raise CompactCNNError(f"workers must be >= 0, got {workers}")
    return _loader(dataset, batch_size, shuffle, seed, augment, workers, keys_only=False)


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, augment: bool,
            workers: int, keys_only: bool) -> DataLoader:
    """The one place a loader's draws are set up; ``keys_only`` yields the keys, not samples.

    A batch's keys are its indices, or its ``(index, dy, dx, flip)`` with ``augment``. Keys
    come from the very DataLoader, sampler and generator that load the samples, so they are
    the same draws whatever DataLoader does with its generator (it takes a worker base seed
    from it before the sampler shuffles).
    """
    generator = torch.Generator().manual_seed(seed)
    n = len(dataset)  # type: ignore[arg-type]
    sampler = _AugmentSampler(n, shuffle, generator) if augment else None
    collate = None  # DataLoader's default_collate
    if keys_only:
        dataset, collate = _Keys(n), list
    elif augment:
        dataset, collate = _WithAugmentParams(dataset), _augment_collate
    return DataLoader(dataset, batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, collate_fn=collate,  # type: ignore[arg-type]
                      num_workers=workers, generator=generator)


class _Keys(Dataset):
    """Yields its keys unchanged: a loader over it gives each batch's keys instead of samples."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: object) -> object:
        return key


def _epoch_seed(seed: int, epoch: int) -> int:
    """Mix (seed, epoch) so that nearby pairs such as (0, 1) and (1, 0) give unrelated streams."""
    if seed < 0 or epoch < 0:
        raise CompactCNNError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    augment: bool = False,
    workers: int = 0,
) -> DataLoader:
    """A shuffling loader for one epoch whose batches depend only on (seed, epoch).

    A run resumed from a checkpoint at epoch k builds the same loader an uninterrupted run
    would have, so it reproduces that run exactly.
    """
    return make_loader(
        dataset,
        batch_size,
        shuffle=True,
        seed=_epoch_seed(seed, epoch),
        augment=augment,
        workers=workers,
    )


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, augment: bool = False
                  ) -> list[list]:
    """The keys of every batch :func:`epoch_loader` yields for a dataset of ``n`` samples.

    Each batch is a list of indices, or of ``(index, dy, dx, flip)`` with ``augment``. Under
    torchrun each process loads its share of these (see ``run/distributed.py``), so N
    processes train on the very batches, augmentation included, that one process would.
    """
    _check_positive("batch_size", batch_size)
    return list(_loader(_Keys(n), batch_size, True, _epoch_seed(seed, epoch), augment, 0,
                        keys_only=True))


def batch_loader(dataset: Dataset, batches: Sequence[Sequence], augment: bool = False,
                 workers: int = 0) -> DataLoader:
    """A loader that yields exactly ``batches`` (keys from :func:`epoch_batches`), in order.

    An empty batch yields empty tensors shaped like the others: a torchrun process whose share
    of a small last batch is nothing still has to take the step with the others.
    """
    if workers < 0:
        raise CompactCNNError(f"workers must be >= 0, got {workers}")
    data, collate = (_WithAugmentParams(dataset), _augment_collate) if augment else (
        dataset, default_collate)
    first = (0, 0, 0, False) if augment else 0
    return DataLoader(data, batch_sampler=batches,  # type: ignore[arg-type]
                      collate_fn=_EmptyAware(collate, collate([data[first]])),
                      num_workers=workers,
                      # No draw depends on it; it keeps DataLoader off the global RNG.
                      generator=torch.Generator().manual_seed(0))


class _EmptyAware:
    """``collate``, except that no samples give empty tensors like ``template`` (a class, not a
    closure, so that worker processes can receive it)."""

    def __init__(self, collate: Callable[[Sequence], list[torch.Tensor]],
                 template: Sequence[torch.Tensor]) -> None:
        self.collate, self.template = collate, template

    def __call__(self, samples: Sequence) -> list[torch.Tensor]:
        if not samples:
            return [t[:0] for t in self.template]
        return self.collate(samples)
