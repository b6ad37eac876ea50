"""Proximal maps of the sparsity penalties, as pure functions of a neuron-major matrix.

Each penalty acts on the matrix that :meth:`compactcnn.groups.NeuronGroup.matrix` returns (one
row per neuron, every scalar the neuron owns side by side) and returns the proximal map of
``step * penalty`` there: the closed-form second half of a forward-backward (FOBOS) step. The
maps never touch their input, so they can be checked against their formulas in isolation; the
optimizer decides where the result is written.

All the penalties are linear in their weights, so ``prox(step, penalty.scaled(f))`` equals
``prox(step * f, penalty)``: schedules may scale either.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from compactcnn.errors import CompactCNNError

ProximalMap = Callable[[Tensor, float], Tensor]


def _weight(name: str, value: float) -> float:
    """A negative or non-finite weight has no proximal map; refuse it when the penalty is made.

    Returned as a plain float so that numpy or int weights compute and print like any other.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CompactCNNError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise CompactCNNError(f"{name} must be finite, got {value}")
    if value < 0:
        raise CompactCNNError(f"{name} must be >= 0, got {value:g}")
    return float(value)


@dataclass(frozen=True)
class GroupLasso:
    """lam * sum over neurons of c * ||w_neuron||_2, the penalty that makes whole neurons zero.

    With ``weighted`` the weight c is sqrt(scalars per neuron), so that layers with wide and
    narrow neurons feel the same pressure per scalar; otherwise c = 1.

    **Reweighting.** Plain group lasso shrinks the neurons that will survive as hard as those
    on their way out, and the survivors pay for it in accuracy while the penalty works. With
    ``reweight`` = g > 0 each neuron's threshold is multiplied by (m / ||w_neuron||) ** g, m
    the mean norm of the group's live neurons: a neuron of average norm feels lam as before, a
    large one less, a small one more. Recomputed at every step from the weights as they are,
    this is the iteratively reweighted group lasso (Candes, Wakin & Boyd 2008, for l1; the
    adaptive group lasso of Wang & Leng 2008 fixes the weights once): each step is the
    proximal step of the log penalty's linearisation at the current weights. A dead neuron
    comes back only when the gradient's step beats sqrt(t * m) (g = 1), far more than plain
    group lasso's t, so once the penalty has decided, it stays decided.
    """

    lam: float
    weighted: bool = True
    reweight: float = 0.0
    name: ClassVar[str] = "group"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _weight("lam", self.lam))
        object.__setattr__(self, "reweight", _weight("reweight", self.reweight))

    def threshold(self, width: int, step: float) -> float:
        """The row norm at or below which a neuron of ``width`` scalars becomes exactly zero
        (before any reweighting)."""
        return step * self.lam * (math.sqrt(width) if self.weighted else 1.0)

    def adapt(self, t: float | Tensor, norms: Tensor) -> float | Tensor:
        """The threshold ``t`` reweighted per neuron (see the class); ``t`` itself without
        ``reweight`` or without a live neuron."""
        if not self.reweight:  # the plain step must not pay for the mask (a sync on a GPU)
            return t
        live = norms[norms > 0]
        if not len(live):
            return t
        tiny = torch.finfo(norms.dtype).tiny  # a dead row's threshold is huge, not inf / nan
        return t * (live.mean() / norms.clamp(min=tiny)) ** self.reweight

    def factor(self, squared_norms: Tensor, width: int, step: float) -> Tensor:
        """Per-row scale max(0, 1 - t / ||w||) given the rows' squared norms.

        Split out of :meth:`__call__` so that the optimizer can scale parameters in place with
        the very same arithmetic. ``norm > t`` rather than a clamp keeps all-zero rows at 0
        even where t rounds to 0 in the input dtype (a clamp would pass on 0 / 0 = NaN).
        """
        t = self.threshold(width, step)
        if t == 0:  # rows so small that their squares underflow must survive too
            return torch.ones_like(squared_norms)
        norms = squared_norms.sqrt()
        t = self.adapt(t, norms)
        return torch.where(norms > t, 1 - t / norms, 0.0)

    def __call__(self, matrix: Tensor, step: float) -> Tensor:
        squared_norms = matrix.square().sum(dim=1)
        return matrix * self.factor(squared_norms, matrix.shape[1], step).unsqueeze(1)

    def scaled(self, factor: float) -> GroupLasso:
        return replace(self, lam=self.lam * factor)


@dataclass(frozen=True)
class SparseGroupLasso:
    """lam1 * ||w||_1 + lam2 * group lasso: dead neurons plus sparse weights within live ones.

    The l1 and l2,1 terms share their row structure, so soft-thresholding each element and
    then applying the group step is the exact proximal map of the sum, not an approximation.
    """

    lam1: float
    lam2: float
    weighted: bool = True
    reweight: float = 0.0  # of the group term: see GroupLasso
    name: ClassVar[str] = "sparse-group"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam1", _weight("lam1", self.lam1))
        object.__setattr__(self, "lam2", _weight("lam2", self.lam2))
        object.__setattr__(self, "reweight", _weight("reweight", self.reweight))

    def __call__(self, matrix: Tensor, step: float) -> Tensor:
        t = step * self.lam1
        soft = matrix.sign() * (matrix.abs() - t).clamp(min=0)
        return GroupLasso(self.lam2, self.weighted, self.reweight)(soft, step)

    def scaled(self, factor: float) -> SparseGroupLasso:
        return replace(self, lam1=self.lam1 * factor, lam2=self.lam2 * factor)


@dataclass(frozen=True)
class LowRank:
    """lam * nuclear norm of the neuron matrix.

    The matrix is the neuron matrix: each neuron's weights, bias and coupled norm parameters
    side by side. Its rank bounds the rank of the layer's weight reshaped to
    ``[neurons, fan-in]`` (that is a subset of its columns), so shrinking the singular values
    here lowers the rank a factorised layer needs, rather than removing neurons.
    """

    lam: float
    name: ClassVar[str] = "low-rank"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _weight("lam", self.lam))

    def __call__(self, matrix: Tensor, step: float) -> Tensor:
        t = step * self.lam
        if t == 0:  # an SVD round trip is not bit-exact, and the identity must be
            return matrix.clone()
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return (u * (s - t).clamp(min=0)) @ vh

    def scaled(self, factor: float) -> LowRank:
        return replace(self, lam=self.lam * factor)


@dataclass(frozen=True)
class GroupLowRank:
    """lam * group lasso + lam_rank * nuclear norm: fewer neurons, and low rank among the rest.

    The step is the low-rank map followed by the group map, each with its own weight. That is
    a composition, not the exact proximal map of the sum (which has no closed form), and the
    order is deliberate: an SVD round trip turns exact zeros into rounding noise, so the group
    step comes last and the neurons it kills stay exactly 0.0, which is what compaction and the
    optimizer's dead-neuron bookkeeping look for. Scaling rows keeps the rank the low-rank step
    left, so the survivors can still be factorised (:func:`compactcnn.surgery.factorise`).
    """

    lam: float
    lam_rank: float
    weighted: bool = True
    reweight: float = 0.0  # of the group term: see GroupLasso
    name: ClassVar[str] = "group+low-rank"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _weight("lam", self.lam))
        object.__setattr__(self, "lam_rank", _weight("lam_rank", self.lam_rank))
        object.__setattr__(self, "reweight", _weight("reweight", self.reweight))

    def __call__(self, matrix: Tensor, step: float) -> Tensor:
        group = GroupLasso(self.lam, self.weighted, self.reweight)
        return group(LowRank(self.lam_rank)(matrix, step), step)

    def scaled(self, factor: float) -> GroupLowRank:
        return replace(self, lam=self.lam * factor, lam_rank=self.lam_rank * factor)


# The penalties by the name a configuration gives them; "none" trains the dense baseline.
# Each builder takes (lam, lam1, lam_rank, reweight): lam weighs the group term (and low-rank's
# nuclear norm on its own), lam1 the l1 term of sparse-group, lam_rank the nuclear norm of
# group+low-rank, reweight the group term's reweighting (GroupLasso).
PENALTIES: dict[str, Callable[[float, float, float, float], ProximalMap | None]] = {
    "none": lambda lam, lam1, lam_rank, reweight: None,
    "group": lambda lam, lam1, lam_rank, reweight: GroupLasso(lam, reweight=reweight),
    "sparse-group": lambda lam, lam1, lam_rank, reweight: SparseGroupLasso(
        lam1, lam, reweight=reweight),
    "low-rank": lambda lam, lam1, lam_rank, reweight: LowRank(lam),
    "group+low-rank": lambda lam, lam1, lam_rank, reweight: GroupLowRank(
        lam, lam_rank, reweight=reweight),
}

#: the penalties that drive singular values to zero: their layers are factorised after compaction
LOW_RANK = ("low-rank", "group+low-rank")
#: the penalties with a group term, the only ones ``reweight`` applies to
GROUP_TERM = ("group", "sparse-group", "group+low-rank")


def make_penalty(name: str, lam: float, lam1: float = 0.0, lam_rank: float = 0.0,
                 reweight: float = 0.0) -> ProximalMap | None:
    """The proximal map called ``name``, or None for the dense baseline."""
    if name not in PENALTIES:
        raise CompactCNNError(f"unknown penalty '{name}'; choose one of: "
                              + ", ".join(PENALTIES))
    if reweight and name not in GROUP_TERM:
        raise CompactCNNError(f"reweight applies to a group term; '{name}' has none (use group, "
                              "sparse-group or group+low-rank)")
    return PENALTIES[name](lam, lam1, lam_rank, reweight)
