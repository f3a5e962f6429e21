"""CES regression and CQR intervals against exact (rational) references, at any offset and scale.

The references recompute each set from its definition in exact arithmetic (``fractions``)
on the same float inputs: the set is a union of intervals whose ends lie among finitely
many critical points (the knots between candidates' augmented losses and the candidates'
interval ends), so testing membership at every critical point and between each pair of
neighbours gives the exact convex hull.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eecontrol.core.conformal import (
    ces_quantile_intervals,
    ces_regression_intervals,
    conformal_rank,
    naive_corrected_alpha,
    pinball_loss,
    split_quantile_intervals,
)


def _kth(values: list[Fraction], rank: int) -> Fraction | None:
    return sorted(values)[rank - 1] if rank <= len(values) else None  # None = infinite


def _union_from_critical(points: set[Fraction], member) -> list[tuple[float, float]]:
    """Exact union (disjoint closed intervals) of a set whose ends lie in ``points``."""
    c = sorted(points)
    # probes in increasing order: (-inf, c0), c0, (c0, c1), c1, ..., c_last, (c_last, inf)
    probes: list[tuple[Fraction, Fraction, Fraction]] = [(c[0] - 1, -math.inf, c[0])]
    for a, b in itertools.pairwise(c):
        probes += [(a, a, a), ((a + b) / 2, a, b)]
    probes += [(c[-1], c[-1], c[-1]), (c[-1] + 1, c[-1], math.inf)]  # (probe, inf, sup)
    pieces: list[list] = []
    open_run = False
    for y, inf, sup in probes:
        if member(y):
            if open_run:
                pieces[-1][1] = sup
            else:
                pieces.append([inf, sup])
            open_run = True
        else:
            open_run = False
    return [(float(a), float(b)) for a, b in pieces]


def _exact_squared_union(hp, hy, tp_j, alpha) -> list[tuple[float, float]]:
    f = np.vectorize(Fraction, otypes=[object])
    hp, hy, tp_j = f(hp), f(hy), f(tp_j)
    t, n = hp.shape
    loss = [sum((hy[i] - hp[k, i]) ** 2 for i in range(n)) for k in range(t)]
    q = [
        _kth([abs(hy[i] - hp[k, i]) for i in range(n)], conformal_rank(n, alpha)) for k in range(t)
    ]
    m = list(tp_j)
    points = {m[0]}
    for a in range(t):
        if q[a] is not None:
            points |= {m[a] - q[a], m[a] + q[a]}
        for b in range(t):
            if m[a] != m[b]:
                points.add((m[a] + m[b]) / 2 + (loss[b] - loss[a]) / (2 * (m[b] - m[a])))

    def member(y: Fraction) -> bool:
        aug = [loss[k] + (y - m[k]) ** 2 for k in range(t)]
        k = aug.index(min(aug))
        return q[k] is None or abs(y - m[k]) <= q[k]

    return _union_from_critical(points, member)


def _rho(u: Fraction, beta: Fraction) -> Fraction:
    return beta * u if u > 0 else (beta - 1) * u


def _exact_cqr_union(hl, hu, hy, tl_j, tu_j, alpha, levels) -> list[tuple[float, float]]:
    f = np.vectorize(Fraction, otypes=[object])
    hl, hu, hy, tl_j, tu_j = f(hl), f(hu), f(hy), f(tl_j), f(tu_j)
    b_lo, b_hi = Fraction(levels[0]), Fraction(levels[1])
    t, n = hl.shape
    rank = conformal_rank(n, alpha)
    l_lo = [sum(_rho(hy[i] - hl[k, i], b_lo) for i in range(n)) for k in range(t)]
    l_hi = [sum(_rho(hy[i] - hu[k, i], b_hi) for i in range(n)) for k in range(t)]
    q = {
        (a, b): _kth([max(hl[a, i] - hy[i], hy[i] - hu[b, i]) for i in range(n)], rank)
        for a in range(t)
        for b in range(t)
    }
    points = set(tl_j) | set(tu_j)
    for qs, loss, beta in ((tl_j, l_lo, b_lo), (tu_j, l_hi, b_hi)):
        for a in range(t):
            for b in range(t):  # falling arm of a meets rising arm of b
                points.add((loss[a] + (1 - beta) * qs[a]) - (loss[b] - beta * qs[b]))
    for (a, b), v in q.items():
        if v is not None:
            points |= {tl_j[a] - v, tu_j[b] + v}

    def member(y: Fraction) -> bool:
        lo = [l_lo[k] + _rho(y - tl_j[k], b_lo) for k in range(t)]
        hi = [l_hi[k] + _rho(y - tu_j[k], b_hi) for k in range(t)]
        a, b = lo.index(min(lo)), hi.index(min(hi))
        return q[a, b] is None or max(tl_j[a] - y, y - tu_j[b]) <= q[a, b]

    return _union_from_critical(points, member)


def _close(ours: float, exact: float, tol: float) -> bool:
    if math.isinf(exact):
        return ours == exact
    return abs(ours - exact) <= tol


def _assert_union_equal(res, j: int, exact: list[tuple[float, float]], tol: float) -> None:
    if not exact:  # an empty set (quantile regression without fallback)
        assert math.isnan(res.lower[j]) and math.isnan(res.upper[j])
        return
    assert _close(float(res.lower[j]), exact[0][0], tol), (float(res.lower[j]), exact, tol)
    assert _close(float(res.upper[j]), exact[-1][1], tol), (float(res.upper[j]), exact, tol)
    ours = res.union(j)
    assert len(ours) == len(exact), (ours, exact)
    for (a, b), (c, d) in zip(ours, exact):
        assert _close(a, c, tol) and _close(b, d, tol), (ours, exact, tol)


_SCALE = st.floats(min_value=-3.0, max_value=3.0).map(lambda e: 10.0**e)  # spread 1e-3 .. 1e3
_OFFSET = st.one_of(
    st.just(0.0),
    st.floats(min_value=-8.0, max_value=8.0).map(lambda e: 10.0**e),
    st.floats(min_value=-8.0, max_value=8.0).map(lambda e: -(10.0**e)),
)


# what the two hull tests draw besides the shape: a seed, a level, an offset and a scale
_DRAWS = {
    "seed": st.integers(0, 2**31 - 1),
    "alpha": st.sampled_from([0.1, 0.25, 0.5]),
    "offset": _OFFSET,
    "spread": _SCALE,
}


@settings(max_examples=60, deadline=None)
@given(t=st.integers(1, 6), n=st.integers(2, 12), **_DRAWS)
def test_squared_error_hull_is_exact_at_any_offset_and_scale(seed, t, n, alpha, offset, spread):
    rng = np.random.default_rng(seed)
    hy = offset + spread * rng.normal(size=n)
    hp = hy + spread * rng.normal(size=(t, n)) * rng.uniform(0.2, 1.5, size=(t, 1))
    tp = offset + spread * rng.normal(size=(t, 2)) * 3
    res = ces_regression_intervals(
        torch.tensor(hp), torch.tensor(hy), torch.tensor(tp), alpha, union=True
    )
    tol = 1e-7 * spread + 8 * math.ulp(abs(offset) + 20 * spread)
    for j in range(2):
        _assert_union_equal(res, j, _exact_squared_union(hp, hy, tp[:, j], alpha), tol)


@settings(max_examples=60, deadline=None)
@given(
    t=st.integers(1, 4),
    n=st.integers(2, 10),
    levels=st.sampled_from([(0.05, 0.95), (0.1, 0.9), (0.25, 0.6)]),
    **_DRAWS,
)
def test_cqr_hull_is_exact_at_any_offset_and_scale(seed, t, n, alpha, levels, offset, spread):
    rng = np.random.default_rng(seed)
    hy = offset + spread * rng.normal(size=n)
    centre = spread * rng.normal(size=(t, n)) * 0.5
    hl = hy + centre - spread * rng.uniform(0.2, 2.0, size=(t, n))
    hu = hy + centre + spread * rng.uniform(0.2, 2.0, size=(t, n))
    tl = offset + spread * rng.normal(size=(t, 2))
    tu = tl + spread * rng.uniform(-0.5, 3.0, size=(t, 2))  # crossing quantiles included
    args = [torch.tensor(v) for v in (hl, hu, hy, tl, tu)]
    res = ces_quantile_intervals(*args, alpha, levels, union=True, fallback=False)
    tol = 1e-7 * spread + 8 * math.ulp(abs(offset) + 20 * spread)
    for j in range(2):
        exact = _exact_cqr_union(hl, hu, hy, tl[:, j], tu[:, j], alpha, levels)
        _assert_union_equal(res, j, exact, tol)


def _grid_data(seed: int, t: int, n: int, m: int) -> tuple[torch.Tensor, ...]:
    """Values on a 2^-20 grid, so that adding 1e8 is exact and only the method can differ."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.round(torch.randn(*shape, generator=g, dtype=torch.float64) * 2**20) / 2**20

    hy = r(n)
    return hy, r(t, n), r(t, m)


def test_hull_at_offset_1e8_equals_the_hull_at_0_shifted():
    # the bar case of issue 15: unit spread, outcomes near 1e8
    hy, noise, tp = _grid_data(0, 20, 50, 30)
    hp = hy + noise * torch.linspace(0.2, 1.0, 20, dtype=torch.float64).unsqueeze(1)
    base = ces_regression_intervals(hp, hy, tp, 0.1, union=True)
    assert torch.isfinite(base.width()).all() and (base.width() > 0).all()
    for off in (1e6, 1e7, 1e8):
        moved = ces_regression_intervals(hp + off, hy + off, tp + off, 0.1, union=True)
        torch.testing.assert_close(moved.lower - off, base.lower, rtol=0, atol=1e-6)
        torch.testing.assert_close(moved.upper - off, base.upper, rtol=0, atol=1e-6)
        for j in range(30):
            pieces = [(a - off, b - off) for a, b in moved.union(j)]
            assert len(pieces) == len(base.union(j))
            np.testing.assert_allclose(pieces, base.union(j), rtol=0, atol=1e-6)
    # quantile regression too
    hl, hu = hp - 1.0, hp + 1.0
    tl, tu = tp - 1.0, tp + 1.0 + noise[:, :30].abs()
    base = ces_quantile_intervals(hl, hu, hy, tl, tu, 0.1)
    moved = ces_quantile_intervals(hl + 1e8, hu + 1e8, hy + 1e8, tl + 1e8, tu + 1e8, 0.1)
    torch.testing.assert_close(moved.lower - 1e8, base.lower, rtol=0, atol=1e-6)
    torch.testing.assert_close(moved.upper - 1e8, base.upper, rtol=0, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    t=st.integers(1, 8),
    levels=st.sampled_from([(0.05, 0.95), (0.1, 0.9), (0.3, 0.5)]),
    alpha=st.sampled_from([0.1, 0.2]),
)
def test_cqr_union_matches_a_brute_force_grid(seed, t, levels, alpha):
    """Select per grid value of y by the augmented pinball loss, score, compare to the union."""
    g = torch.Generator().manual_seed(seed)
    n, m = 20, 3
    hy = torch.randn(n, generator=g, dtype=torch.float64)
    hl = hy - 1 + torch.randn(t, n, generator=g, dtype=torch.float64) * 0.8
    hu = hy + 1 + torch.randn(t, n, generator=g, dtype=torch.float64) * 0.8
    tl = torch.randn(t, m, generator=g, dtype=torch.float64) - 1
    tu = tl + 2 + torch.randn(t, m, generator=g, dtype=torch.float64)
    res = ces_quantile_intervals(hl, hu, hy, tl, tu, alpha, levels, union=True, fallback=False)
    grid = torch.linspace(-12, 12, 6001, dtype=torch.float64)
    loss_lo = pinball_loss(hl, hy, levels[0]).sum(1)
    loss_hi = pinball_loss(hu, hy, levels[1]).sum(1)
    rank = conformal_rank(n, alpha)
    for j in range(m):
        f_lo = loss_lo[:, None] + pinball_loss(tl[:, j : j + 1], grid[None], levels[0])
        f_hi = loss_hi[:, None] + pinball_loss(tu[:, j : j + 1], grid[None], levels[1])
        a, b = f_lo.argmin(0), f_hi.argmin(0)
        q = torch.kthvalue(torch.maximum(hl[a] - hy, hy - hu[b]), rank, dim=1).values
        inside = torch.maximum(tl[a, j] - grid, grid - tu[b, j]) <= q
        mine = torch.zeros_like(inside)
        for lo, hi in res.union(j):
            mine |= (grid >= lo) & (grid <= hi)
        gaps = [torch.topk(f, min(2, t), dim=0, largest=False).values for f in (f_lo, f_hi)]
        clear = torch.ones_like(inside)
        if t > 1:  # ignore grid values within 1e-9 of a selection tie (a knot)
            clear = ((gaps[0][1] - gaps[0][0]) > 1e-9) & ((gaps[1][1] - gaps[1][0]) > 1e-9)
        assert torch.equal(mine[clear], inside[clear]), (j, res.union(j))
        if inside.any():
            assert float(res.lower[j]) <= float(grid[inside][0]) + 2e-3
            assert float(res.upper[j]) >= float(grid[inside][-1]) - 2e-3


def test_cqr_one_candidate_is_split_cqr():
    g = torch.Generator().manual_seed(3)
    hy = torch.randn(40, generator=g, dtype=torch.float64)
    hl, hu = hy - 1 + torch.randn(40, generator=g), hy + 1 + torch.randn(40, generator=g)
    tl, tu = torch.randn(7, generator=g) - 1, torch.randn(7, generator=g) + 1
    res = ces_quantile_intervals(hl[None], hu[None], hy, tl[None], tu[None], 0.1, union=True)
    lo, hi = split_quantile_intervals(hl, hu, hy, tl, tu, 0.1)
    # hand-check Q: the 37th smallest of 40 scores (ceil(0.9 * 41) = 37)
    q = torch.sort(torch.maximum(hl - hy, hy - hu)).values[36]
    torch.testing.assert_close(lo, tl.double() - q)
    ok = lo <= hi
    torch.testing.assert_close(res.lower[ok], lo[ok])
    torch.testing.assert_close(res.upper[ok], hi[ok])


def test_cqr_empty_set_falls_back_to_naive_or_is_nan():
    # quantiles that cross by more than -2Q: the CQR set of the only candidate pair is empty
    hy = torch.zeros(9, dtype=torch.float64)
    hl, hu = torch.full((1, 9), -1.0), torch.full((1, 9), 1.0)  # scores -1, Q = -1
    tl, tu = torch.tensor([[0.5]]), torch.tensor([[-0.5]])
    res = ces_quantile_intervals(hl, hu, hy, tl, tu, 0.1, fallback=False)
    assert math.isnan(res.lower[0]) and res.width()[0] == 0
    res = ces_quantile_intervals(hl, hu, hy, tl, tu, 0.1)
    assert res.fallback is not None and bool(res.fallback[0])
    assert (float(res.lower[0]), float(res.upper[0])) == (1.5, -1.5)  # the naive (empty) one


def test_cqr_infinite_quantile_gives_the_whole_line_and_bad_input():
    hl, hu = torch.zeros(2, 5) - 1, torch.zeros(2, 5) + 1
    res = ces_quantile_intervals(hl, hu, torch.zeros(5), hl[:, :2], hu[:, :2], 0.1)  # rank 6 > 5
    assert torch.isinf(res.lower).all() and torch.isinf(res.upper).all()
    with pytest.raises(ValueError, match=r"`quantiles` must be two levels"):
        ces_quantile_intervals(hl, hu, torch.zeros(5), hl, hu, 0.1, quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match="shapes must be"):
        ces_quantile_intervals(hl, hu[:1], torch.zeros(5), hl, hu, 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        ces_quantile_intervals(hl, hu, torch.full((5,), math.nan), hl, hu, 0.1)


def test_cqr_intervals_cover_under_exchangeability():
    g = torch.Generator().manual_seed(4)
    reps, t, n, alpha = 800, 6, 40, 0.1
    widths = torch.linspace(0.3, 2.5, t, dtype=torch.float64).unsqueeze(1)
    covered = []
    for _ in range(reps):
        x = torch.randn(n + 1, generator=g, dtype=torch.float64)
        y = x + (0.5 + x.abs()) * torch.randn(n + 1, generator=g, dtype=torch.float64)
        lo, hi = x.unsqueeze(0) - widths, x.unsqueeze(0) + widths  # fixed candidate models
        res = ces_quantile_intervals(lo[:, :n], hi[:, :n], y[:n], lo[:, n:], hi[:, n:], alpha)
        covered.append(bool(res.lower[0] <= y[n] <= res.upper[0]))
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    assert np.mean(covered) >= 1 - bound


def test_naive_corrected_alpha_is_the_largest_level_the_bound_allows():
    from scipy.stats import beta

    for t, n in ((100, 125), (200, 500), (1000, 1000)):
        a = naive_corrected_alpha(t, n, 0.1)
        assert 0 < a < 0.1
        markov = [0.99 * beta.ppf(1 / (100 * t), n + 1 - ll, ll) for ll in range(1, n + 1)]
        best = max(ll for ll in range(1, n + 1) if markov[ll - 1] >= 0.9) / (n + 1)
        assert a >= best  # at least the Markov level (the DKW level may be larger)
    # more candidates or fewer points: a smaller (more conservative) level
    assert naive_corrected_alpha(1000, 125, 0.1) <= naive_corrected_alpha(10, 125, 0.1)
    assert naive_corrected_alpha(100, 5, 0.1) == 0.0  # nothing finite is valid
    with pytest.raises(ValueError, match="n_candidates >= 1"):
        naive_corrected_alpha(0, 10, 0.1)
