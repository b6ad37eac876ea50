"""The proximal maps against their closed forms and against the definition of a proximal map."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compactcnn.errors import CompactCNNError
from compactcnn.sparsity import GroupLasso, LowRank, SparseGroupLasso
from compactcnn.sparsity.penalties import make_penalty

examples = settings(max_examples=60, deadline=None)

shapes = st.tuples(st.integers(1, 9), st.integers(1, 17))
lams = st.floats(0.0, 3.0)
steps = st.floats(0.0, 2.0)
seeds = st.integers(0, 2**31 - 1)


def random_matrix(shape: tuple[int, int], seed: int, zero_rows: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 3
    matrix[:zero_rows] = 0
    return matrix


@examples
@given(shapes, lams, steps, st.booleans(), seeds)
def test_group_lasso_shrinks_each_row_norm_by_the_threshold(shape, lam, step, weighted, seed):
    matrix = random_matrix(shape, seed, zero_rows=seed % 2)
    before = matrix.clone()
    out = GroupLasso(lam, weighted)(matrix, step)

    assert torch.equal(matrix, before)
    assert not out.isnan().any()
    t = step * lam * (math.sqrt(shape[1]) if weighted else 1.0)
    norms, new_norms = matrix.norm(dim=1), out.norm(dim=1)
    for row in range(shape[0]):
        if norms[row] <= t:
            assert torch.all(out[row] == 0.0)
        else:
            assert new_norms[row] == pytest.approx(float(norms[row]) - t, rel=1e-5, abs=1e-5)
            # the direction is kept: the row is scaled, not rotated
            scale = float(new_norms[row] / norms[row])
            torch.testing.assert_close(out[row], matrix[row] * scale)


def test_group_lasso_row_exactly_at_the_threshold_becomes_zero():
    matrix = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 0.0]])
    out = GroupLasso(2.5, weighted=False)(matrix, 2.0)  # threshold 5 = norm of row 0
    assert torch.equal(out, torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]))

    weighted = GroupLasso(0.5)(torch.full((1, 4), 0.5), 1.0)  # 0.5 * sqrt(4) = 1 = norm
    assert torch.equal(weighted, torch.zeros(1, 4))


@examples
@given(shapes, seeds, st.floats(0.0, 2.0))
def test_zero_lam_is_exactly_the_identity(shape, seed, step):
    matrix = random_matrix(shape, seed, zero_rows=1)
    matrix[-1, 0] = 1e-30  # its square underflows to 0; the identity must keep it anyway
    for penalty in (GroupLasso(0.0), SparseGroupLasso(0.0, 0.0), LowRank(0.0)):
        out = penalty(matrix, step)
        assert torch.equal(out, matrix)
        assert out is not matrix


@examples
@given(shapes, lams, lams, steps, st.booleans(), seeds)
def test_sparse_group_lasso_is_soft_threshold_then_group_step(shape, lam1, lam2, step, weighted,
                                                             seed):
    matrix = random_matrix(shape, seed)
    before = matrix.clone()
    out = SparseGroupLasso(lam1, lam2, weighted)(matrix, step)
    expected = GroupLasso(lam2, weighted)(F.softshrink(matrix, step * lam1), step)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(matrix, before)


@examples
@given(st.integers(1, 8), st.integers(1, 12), lams, steps, seeds)
def test_low_rank_shrinks_singular_values_by_step_times_lam(rows, cols, lam, step, seed):
    matrix = random_matrix((rows, cols), seed).double()
    before = matrix.clone()
    out = LowRank(lam)(matrix, step)
    expected = (torch.linalg.svdvals(matrix) - step * lam).clamp(min=0)
    torch.testing.assert_close(torch.linalg.svdvals(out), expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(matrix, before)


def test_low_rank_with_a_large_lam_lowers_the_rank():
    matrix = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))
    assert torch.linalg.matrix_rank(matrix) == 8
    middle = float(torch.linalg.svdvals(matrix)[4])
    out = LowRank(middle)(matrix, 1.0)
    assert torch.linalg.matrix_rank(out) < 8
    assert out.dtype == matrix.dtype


def penalty_value(penalty, x: torch.Tensor) -> torch.Tensor:
    if isinstance(penalty, LowRank):
        return penalty.lam * torch.linalg.svdvals(x).sum()
    if isinstance(penalty, SparseGroupLasso):
        group = GroupLasso(penalty.lam2, penalty.weighted)
        return penalty.lam1 * x.abs().sum() + penalty_value(group, x)
    c = math.sqrt(x.shape[1]) if penalty.weighted else 1.0
    return penalty.lam * c * x.norm(dim=1).sum()


def objective(penalty, x: torch.Tensor, v: torch.Tensor, step: float) -> float:
    """0.5 ||x - v||^2 + step * R(x): the function a proximal map minimises over x."""
    return float(0.5 * (x - v).square().sum() + step * penalty_value(penalty, x))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.floats(0.05, 2.0), st.floats(0.1, 1.0), seeds)
def test_every_map_minimises_its_proximal_objective(rows, cols, lam, step, seed):
    """Exactness, not just the formula: no nearby point does better than the map's output."""
    v = random_matrix((rows, cols), seed).double()
    g = torch.Generator().manual_seed(seed + 1)
    for penalty in (GroupLasso(lam), GroupLasso(lam, weighted=False),
                    SparseGroupLasso(lam / 2, lam), LowRank(lam)):
        x = penalty(v, step)
        best = objective(penalty, x, v, step)
        for _ in range(20):
            nudge = torch.randn(v.shape, generator=g, dtype=v.dtype) * 1e-3
            assert best <= objective(penalty, x + nudge, v, step) + 1e-12


@pytest.mark.parametrize("make", [
    lambda lam: GroupLasso(lam), lambda lam: LowRank(lam),
    lambda lam: SparseGroupLasso(lam, 1.0), lambda lam: SparseGroupLasso(1.0, lam),
])
def test_negative_or_non_finite_lam_is_refused(make):
    with pytest.raises(CompactCNNError, match=r"lam[12]? must be >= 0, got -1$"):
        make(-1.0)
    for bad in (math.nan, math.inf):
        with pytest.raises(CompactCNNError, match="must be finite"):
            make(bad)


def test_scaled_and_names():
    assert GroupLasso(0.5, weighted=False).scaled(4) == GroupLasso(2.0, weighted=False)
    assert SparseGroupLasso(1.0, 2.0).scaled(0.5) == SparseGroupLasso(0.5, 1.0)
    assert LowRank(3.0).scaled(0) == LowRank(0.0)
    assert [GroupLasso(1).name, SparseGroupLasso(1, 1).name, LowRank(1).name] == [
        "group", "sparse-group", "low-rank"]
    with pytest.raises(CompactCNNError):
        GroupLasso(1.0).scaled(-1)


@examples
@given(shapes, st.floats(0.01, 3.0), st.floats(0.01, 2.0), st.floats(0.5, 2.0), seeds)
def test_reweighted_group_lasso_scales_each_threshold_by_the_mean_live_norm_over_its_own(
        shape, lam, step, power, seed):
    matrix = random_matrix(shape, seed, zero_rows=seed % 2)
    out = GroupLasso(lam, reweight=power)(matrix, step)

    norms, new_norms = matrix.norm(dim=1), out.norm(dim=1)
    live = norms[norms > 0]
    t = step * lam * math.sqrt(shape[1])
    for row in range(shape[0]):
        if norms[row] == 0:
            assert torch.all(out[row] == 0.0)
            continue
        mine = t * float(live.mean() / norms[row]) ** power
        if norms[row] <= mine * (1 - 1e-5):
            assert torch.all(out[row] == 0.0)
        elif norms[row] > mine * (1 + 1e-5):
            assert new_norms[row] == pytest.approx(float(norms[row]) - mine, rel=1e-4, abs=1e-5)


def test_reweighting_spares_the_large_and_presses_the_small():
    matrix = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # mean norm 2
    plain = GroupLasso(0.5, weighted=False)(matrix, 1.0)  # every row loses 0.5
    reweighted = GroupLasso(0.5, weighted=False, reweight=1.0)(matrix, 1.0)
    assert torch.equal(plain[:, 0], torch.tensor([0.5, 1.5, 2.5]))
    # thresholds 0.5 * 2 / norm: 1.0 (dies at exactly its norm), 0.5, 1/3
    torch.testing.assert_close(reweighted[:, 0], torch.tensor([0.0, 1.5, 3 - 1 / 3]))
    assert torch.equal(GroupLasso(0.5, reweight=0.0)(matrix, 1.0), GroupLasso(0.5)(matrix, 1.0))


def test_reweight_needs_a_group_term():
    assert make_penalty("sparse-group", 0.1, 0.2, reweight=1.0) == SparseGroupLasso(
        0.2, 0.1, reweight=1.0)
    with pytest.raises(CompactCNNError, match="reweight applies to a group term"):
        make_penalty("low-rank", 0.1, reweight=1.0)
    with pytest.raises(CompactCNNError, match="reweight must be >= 0"):
        GroupLasso(0.1, reweight=-1.0)
