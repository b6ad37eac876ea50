"""evolutionary (Wang et al., KDD 2018): a genetic algorithm over binary keep-masks of neurons.

The network trains dense; then a population of masks evolves, each scored by the validation
accuracy of the masked network minus a penalty for every relative unit it lies above the
budget; tournament selection, uniform crossover, bit-flip mutation and elitism, for a bounded
number of generations. The fittest mask is trimmed to the budget (smallest L1 first, if it is
still above) or filled up to it (largest L1 first, if it lies below), and the network is
compacted and fine-tuned like every other method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from compactcnn.accounting.accuracy import evaluate
from compactcnn.methods.base import Context, Method, weight_l1
from compactcnn.methods.selection import Masks, fill, greedy, kill, uniform

POPULATION, GENERATIONS, ELITE = 16, 12, 2
PENALTY = 2.0  # fitness lost per unit of relative excess over the budget
VAL_SAMPLES = 2000


class Evolutionary(Method):
    name = "evolutionary"

    def select(self, ctx: Context) -> Masks:
        g = torch.Generator().manual_seed(0)
        sizes = [group.size for group in ctx.groups]
        l1 = [weight_l1(group) for group in ctx.groups]
        val = torch.utils.data.TensorDataset(*ctx.val[:VAL_SAMPLES])
        saved = [group.matrix().clone() for group in ctx.groups]

        def fitness(dead: Tensor) -> float:
            masks = list(dead.split(sizes))
            if any(bool(m.all()) for m in masks):
                return -1.0
            kill(ctx.groups, masks)
            _, acc = evaluate(ctx.model, val)
            for group, matrix in zip(ctx.groups, saved, strict=True):
                group.write(matrix)
            counts = torch.tensor([float(m.sum()) for m in masks], dtype=torch.float64)
            return acc - PENALTY * max(0.0, ctx.budget.excess(ctx.cost.fractions(counts)))

        seed = torch.cat(uniform(ctx.cost, ctx.budget, l1))
        population = [seed] + [_mutate(seed, 0.1, g) for _ in range(POPULATION - 1)]
        for _ in range(GENERATIONS):
            scored = sorted(((fitness(d), k) for k, d in enumerate(population)), reverse=True)
            ranked = [population[k] for _, k in scored]
            children = ranked[:ELITE]
            while len(children) < POPULATION:
                a, b = _tournament(ranked, g), _tournament(ranked, g)
                child = torch.where(torch.rand(len(a), generator=g) < 0.5, a, b)
                children.append(_mutate(child, 1 / len(child), g))
            population = children
        best = max(population, key=fitness)
        trimmed = greedy(ctx.cost, ctx.budget, l1, list(best.split(sizes)))
        return fill(ctx.cost, ctx.budget, l1, trimmed)


def _tournament(ranked: list[Tensor], g: torch.Generator) -> Tensor:
    """The better of two individuals drawn at random (``ranked`` is best first)."""
    i, j = torch.randint(len(ranked), (2,), generator=g).tolist()
    return ranked[min(i, j)]


def _mutate(dead: Tensor, rate: float, g: torch.Generator) -> Tensor:
    return dead ^ (torch.rand(len(dead), generator=g) < rate)
