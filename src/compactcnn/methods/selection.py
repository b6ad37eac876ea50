"""Choosing which neurons die to meet a budget, and killing them.

Every method ends the same way: a boolean ``dead`` mask per group, applied by zeroing every
scalar of the dead neurons' groups (:func:`kill`), after which the shared compaction removes
them exactly. The methods differ only in the scores they rank neurons by and in whether the
ranking is global or per layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from compactcnn.errors import CompactCNNError
from compactcnn.methods.budget import Budget, CostModel
from compactcnn.sparsity.neurons import NeuronGroup, even
from compactcnn.surgery.factorise import RANK_TOL

SLACK = 0.02  # how far below the budget a selection may end before dead neurons come back

Masks = list[Tensor]


def kill(groups: Sequence[NeuronGroup], dead: Masks) -> None:
    """Zero every scalar of the neurons marked dead (weights, bias, norm, coupled slices)."""
    with torch.no_grad():
        for group, mask in zip(groups, dead, strict=True):
            if bool(mask.any()):
                matrix = group.matrix()
                matrix[mask.to(matrix.device)] = 0
                group.write(matrix)


def current_dead(groups: Sequence[NeuronGroup]) -> Masks:
    return [g.dead().cpu() for g in groups]


def _removed(cost: CostModel, g: int, mask: Tensor) -> float:
    """How many of group ``g``'s marked neurons compaction removes: grouped convolutions'
    blocks give up as many as their block with fewest (the rule of ``NeuronGroup.dead``), so
    a selection prices what it will win, not what it marks."""
    return float(even(mask, cost.groups[g].blocks).sum())


def _counts(cost: CostModel, dead: Masks) -> Tensor:
    return torch.tensor([_removed(cost, g, d) for g, d in enumerate(dead)], dtype=torch.float64)


def _evened(cost: CostModel, dead: Masks) -> Masks:
    """The marks compaction honours: a neuron it would keep is not zeroed for nothing."""
    return [even(d, cost.groups[g].blocks) for g, d in enumerate(dead)]


def greedy(cost: CostModel, budget: Budget, scores: Sequence[Tensor], dead: Masks | None = None,
           keep: int = 1) -> Masks:
    """Kill neurons in ascending order of score, across all groups, until the budget is met;
    then give back, highest score first, every neuron killed here whose return still meets it.

    The second pass lands just under the budget rather than one expensive neuron below it.
    Scores are compared globally, so they must be on one scale (a method that ranks per layer
    normalises first); a neuron scored inf is never taken. Neurons already in ``dead`` stay
    dead, and every group keeps at least ``keep`` neurons.
    """
    scores = _unpinned(cost, scores)
    dead = [d.clone() for d in dead] if dead is not None else [torch.zeros(len(s), dtype=torch.bool)
                                                               for s in scores]
    counts = _counts(cost, dead)
    order = sorted((float(s[i]), g, i) for g, s in enumerate(scores) for i in range(len(s))
                   if not dead[g][i])
    taken = []
    for score, g, i in order:
        if budget.met(cost.fractions(counts)) or not math.isfinite(score):
            break
        if len(scores[g]) - int(dead[g].sum()) <= keep:
            continue
        dead[g][i] = True
        counts[g] = _removed(cost, g, dead[g])
        taken.append((g, i))
    if not budget.met(cost.fractions(counts)):
        raise CompactCNNError(f"the budget {budget} cannot be met: with every neuron this method "
                              f"ranks removed the model keeps {_describe(cost.fractions(counts))}")
    _spare(cost, budget, dead, counts, reversed(taken))
    return _evened(cost, dead)


def fill(cost: CostModel, budget: Budget, scores: Sequence[Tensor], dead: Masks) -> Masks:
    """Spare dead-marked neurons, highest score first, while the budget still holds.

    For methods whose marks are not yet applied (a search over masks): the spared neurons
    still have their trained weights, so sparing one costs nothing but parameters.
    """
    dead = [d.clone() for d in dead]
    counts = _counts(cost, dead)
    order = sorted(((float(s[i]), g, i) for g, s in enumerate(scores) for i in range(len(s))
                    if dead[g][i]), reverse=True)
    _spare(cost, budget, dead, counts, ((g, i) for _, g, i in order))
    return _evened(cost, dead)


def _spare(cost: CostModel, budget: Budget, dead: Masks, counts: Tensor,
           candidates: Iterable[tuple[int, int]]) -> None:
    """Unmark each candidate (group, neuron), in order, whose return keeps the budget met."""
    for g, i in candidates:
        dead[g][i] = False
        before, counts[g] = counts[g].item(), _removed(cost, g, dead[g])
        if not budget.met(cost.fractions(counts)):
            dead[g][i] = True
            counts[g] = before


def revive(cost: CostModel, budget: Budget, groups: Sequence[NeuronGroup], dead: Masks,
           slack: float = SLACK) -> Masks:
    """Bring dead neurons back, freshly initialised, while the budget still holds, when the
    network lies more than ``slack`` below it in any of the budget's metrics: one at a time, in
    the layer that has lost the largest share of its neurons among those whose neuron still
    fits.

    Passing over a layer that no longer fits matters where neurons' prices differ widely:
    lenet5 at a quarter of the FLOPs ended 8% below its budget when one conv1 filter (4% of
    the FLOPs) could not come back and the search stopped, though conv2 filters fitted. Under
    a joint budget one metric binds while the other may still have room: the neurons that are
    cheap in the binding one (fully connected ones, under a FLOPs bound) fill it.

    A revived neuron's weight rows are drawn like its layer's live rows (same standard
    deviation) and its norm scale set to the live mean, so it trains again; an all-zero neuron
    behind a ReLU would not, its gradient being zero. Under a ranked cost model each revival
    is priced with one more rank in every layer it widens (its random rows, and the columns
    its consumers kept, are new directions): priced at the layer's low rank, vgg_small under
    group+low-rank revived its way from 10% to 15.8% of the parameters.
    """
    dead = [d.clone() for d in dead]
    counts = _counts(cost, dead)
    revived: list[list[int]] = [[] for _ in groups]
    while budget.room(cost.fractions(counts)) > slack:
        share = [float(c) / g.size if c else -1.0 for c, g in zip(counts, groups, strict=True)]
        for k in sorted((k for k in range(len(groups)) if share[k] >= 0),
                        key=lambda k: -share[k]):
            trial = dead[k].clone()
            trial[int(dead[k].nonzero()[0])] = False
            trial = even(trial, groups[k].blocks)  # a grouped block's partners come back with it
            back = (dead[k] & ~trial).nonzero().flatten().tolist()
            before, counts[k] = counts[k].item(), float(trial.sum())
            widened = cost.widened_by(k)
            cost.ranks[widened] += len(back)
            if budget.met(cost.fractions(counts)):
                dead[k] = trial
                revived[k].extend(back)
                break
            counts[k] = before
            cost.ranks[widened] -= len(back)
        else:  # no layer's neuron fits any more
            break
    with torch.no_grad():
        for group, rows, mask in zip(groups, revived, dead, strict=True):
            if rows:
                _initialise(group, torch.tensor(rows), mask)
    return dead


def revive_rank(cost: CostModel, budget: Budget, dead: Masks, slack: float = SLACK) -> None:
    """Give factorised layers rank back, while the network lies more than ``slack`` below the
    budget: the low-rank counterpart of :func:`revive`, for a ranked cost model and neurons
    already killed.

    One direction at a time, to the layer that keeps the smallest share of its full rank, as
    long as the budget holds. A direction comes back fresh: a random rank-one term on the
    layer's live rows and columns, orthogonal to the weight's row and column spaces, with the
    smallest singular value the layer kept, so that factorisation reads the higher rank and
    the compact network trains it.
    """
    counts = torch.tensor([float(d.sum()) for d in dead], dtype=torch.float64)
    layers = cost.ranked()
    if not layers:
        return
    cost.dead_counts()  # reads the ranks of the weights as they are now
    full = cost.full_ranks(counts)
    added = dict.fromkeys((i for i, _ in layers), 0)
    while budget.excess(cost.fractions(counts)) < -slack:
        before = cost.absolute(counts)
        share = {i: float(cost.ranks[i] / full[i]) for i, _ in layers
                 if cost.ranks[i] < full[i]}
        pays = [i for i in share if _pays(cost, counts, i, before)]
        if not pays:
            break
        i = min(pays, key=share.__getitem__)
        cost.ranks[i] += 1
        if not budget.met(cost.fractions(counts)):
            cost.ranks[i] -= 1
            break
        added[i] += 1
    with torch.no_grad():
        for i, module in layers:
            if added[i]:
                _add_directions(module.weight, added[i])


def _pays(cost: CostModel, counts: Tensor, i: int, before: dict[str, float]) -> bool:
    """Whether one more rank in layer ``i`` changes the price (the layer is factorised)."""
    cost.ranks[i] += 1
    changed = cost.absolute(counts) != before
    cost.ranks[i] -= 1
    return changed


def _add_directions(weight: Tensor, k: int) -> None:
    matrix = weight.detach().flatten(1)
    rows = matrix.ne(0).any(dim=1).nonzero().flatten()
    cols = matrix.ne(0).any(dim=0).nonzero().flatten()
    live = matrix[rows][:, cols].double()
    u, s, vh = torch.linalg.svd(live, full_matrices=True)
    rank = int((s > RANK_TOL * s.max()).sum()) if len(s) else 0
    k = min(k, len(rows) - rank, len(cols) - rank)
    if rank == 0 or k <= 0:  # an empty layer has no scale to copy; a full one no room
        return
    left, right = u[:, rank:rank + k], vh[rank:rank + k].T  # orthogonal to what is there
    g = torch.Generator().manual_seed(len(rows) * 7919 + len(cols))
    mix_l = torch.linalg.qr(torch.randn(left.shape[1], k, generator=g, dtype=torch.float64))[0]
    mix_r = torch.linalg.qr(torch.randn(right.shape[1], k, generator=g, dtype=torch.float64))[0]
    term = (left @ mix_l) * s[rank - 1] @ (right @ mix_r).T
    flat = weight.data.view(weight.shape[0], -1)
    flat[rows.unsqueeze(1), cols] += term.to(flat.dtype)


def _initialise(group: NeuronGroup, rows: Tensor, dead: Tensor) -> None:
    for s in group.slices:
        if s.part not in ("weight", "scale"):
            continue
        matrix = s.rows().clone()
        live = matrix[~dead.to(matrix.device)]
        if s.part == "weight":
            std = float(live.std()) if live.numel() > 1 else 0.01
            matrix[rows.to(matrix.device)] = torch.randn(len(rows), matrix.shape[1],
                                                         device=matrix.device) * std
        else:
            matrix[rows.to(matrix.device)] = float(live.mean()) if live.numel() else 1.0
        s.write(matrix)


def uniform(cost: CostModel, budget: Budget, scores: Sequence[Tensor], keep: int = 1) -> Masks:
    """The same share of every group's neurons dies, the lowest-scored of each, chosen as the
    smallest share that meets the budget (found by bisection on the share kept), then topped
    up to the budget (:func:`_top_up`)."""
    scores = _unpinned(cost, scores)

    def masks(share: float) -> Masks:
        out = []
        for s in scores:
            alive = max(keep, round(len(s) * share))
            dead = torch.ones(len(s), dtype=torch.bool)
            dead[torch.argsort(s, descending=True, stable=True)[:alive]] = False
            out.append(dead & torch.isfinite(s))  # as in greedy: inf is never taken
        return out

    def counts(share: float) -> Tensor:
        return _counts(cost, masks(share))

    if not budget.met(cost.fractions(counts(0.0))):
        raise CompactCNNError(f"the budget {budget} cannot be met by narrowing every layer "
                              f"alike: at one neuron each the model keeps "
                              f"{_describe(cost.fractions(counts(0.0)))}")
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if budget.met(cost.fractions(counts(mid))) else (low, mid)
    return _top_up(cost, budget, scores, masks(low))


def _top_up(cost: CostModel, budget: Budget, scores: Sequence[Tensor], dead: Masks) -> Masks:
    """Give neurons back while the budget holds, each to the layer that keeps the smallest
    share, its highest-scored dead one: one share rounded in every layer moves several layers
    at once, so the best share can land a step short (lenet5 at 10%: 9.6%, outside the 2%
    that every method of a comparison is held to). The layers stay as even as rounding
    allows: no layer's share passes the smallest one by more than two neurons of the
    smallest layer (once the expensive layers no longer fit, the cheap ones would otherwise
    take every neuron left: vgg_small's first convolution at 21/32 beside 74/128)."""
    dead = _evened(cost, dead)
    counts = _counts(cost, dead)
    sizes = [len(s) for s in scores]
    step = 2 / min(sizes)
    open_ = {g for g in range(len(scores)) if counts[g] > 0}
    while open_:
        shares = [(sizes[k] - counts[k]) / sizes[k] for k in range(len(sizes))]
        g = min(open_, key=lambda k: (shares[k], k))
        if (sizes[g] - counts[g] + 1) / sizes[g] > min(shares) + step + 1e-12:
            break  # the least kept open layer is the one to grow: the rest would pass it more
        candidates = dead[g].nonzero().flatten()
        trial = dead[g].clone()
        trial[candidates[torch.argmax(scores[g][candidates])]] = False
        trial = even(trial, cost.groups[g].blocks)  # a grouped block gives back evenly
        before, counts[g] = counts[g].item(), float(trial.sum())
        if not budget.met(cost.fractions(counts)):  # nor later: the rest only grows
            counts[g] = before
            open_.discard(g)
            continue
        dead[g] = trial
        if counts[g] == 0:
            open_.discard(g)
    return dead


def _unpinned(cost: CostModel, scores: Sequence[Tensor]) -> list[Tensor]:
    """The scores with every pinned neuron's set to inf: zeroing it would save nothing, since
    compaction must keep it (``NeuronGroup.pinned``), so no selection may count it."""
    out = []
    for group, s in zip(cost.groups, scores, strict=True):
        if group.pinned is not None:
            s = s.to(torch.float64).masked_fill(group.pinned.cpu(), math.inf)
        out.append(s)
    return out


def _describe(fractions: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1%}" for k, v in fractions.items())
