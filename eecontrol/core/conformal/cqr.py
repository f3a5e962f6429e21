"""Conformalized quantile regression (CQR): CES intervals over quantile candidates, and split CQR."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eecontrol.core.conformal._common import (
    _CHUNK_ELEMENTS,
    _check_alpha,
    _f64,
    _finite_centred,
    conformal_rank,
)
from eecontrol.core.conformal.intervals import RegressionIntervals


def pinball_loss(pred: Tensor, y: Tensor, beta: float) -> Tensor:
    """Elementwise pinball loss ``rho_beta(y - pred)``: ``beta u`` if ``u > 0``, else ``(beta - 1) u``.

    Args:
        pred: predicted ``beta``-quantiles.
        y: outcomes (broadcast against ``pred``).
        beta: the quantile level in (0, 1).

    Returns:
        Losses with the broadcast shape, float64.
    """
    u = _f64(y) - _f64(pred)
    return torch.maximum(beta * u, (beta - 1.0) * u)


def _first_argmin_scan(values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Running minimum along dim 1 with the smallest ``index`` on ties.

    Args:
        values: (mc, T).
        index: (mc, T) the original candidate index of each column.

    Returns:
        Inclusive running minima and their owners, both (mc, T).
    """
    mc, t = values.shape
    best = torch.full((mc,), math.inf, dtype=torch.float64)
    owner = torch.full((mc,), t, dtype=torch.long)
    out_v = torch.empty_like(values)
    out_i = torch.empty_like(index)
    for k in range(t):
        v, i = values[:, k], index[:, k]
        better = (v < best) | ((v == best) & (i < owner))
        best = torch.where(better, v, best)
        owner = torch.where(better, i, owner)
        out_v[:, k], out_i[:, k] = best, owner
    return out_v, out_i


def _pinball_envelope(q: Tensor, loss: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Lower envelope in y of ``loss_t + rho_beta(y - q_t)`` for many test points at once.

    Every function is the same V (slope ``beta - 1`` left of ``q_t``, ``beta`` right of it),
    shifted: ``max(A_t - (1 - beta) y, B_t + beta y)`` with ``A_t = loss_t + (1 - beta) q_t``
    and ``B_t = loss_t - beta q_t``. Between two consecutive sorted predictions
    ``q_(k-1) <= y <= q_(k)``, the candidates with ``q_t <= y`` are on their rising arm and
    those with ``q_t >= y`` on their falling arm, so there the envelope is
    ``min(P_k + beta y, S_k - (1 - beta) y)`` with ``P_k`` the prefix minimum of ``B`` and
    ``S_k`` the suffix minimum of ``A`` (in the sorted order). The two lines meet at
    ``y = S_k - P_k`` (their slopes differ by exactly 1): the rising line is lower to the
    left of it, the falling one to the right, each clipped to the gap. Hence at most 2T
    pieces, from one sort and two scans, with no division (inputs are centred by the
    caller). Ties go to the smallest candidate index.

    Args:
        q: (mc, T) the candidates' predicted quantiles at the test points.
        loss: (T,) hold-out pinball losses of the candidates at this level.
        beta: the quantile level.

    Returns:
        ``left``, ``right`` and ``owner`` of the 2T pieces in increasing order of y, each
        (mc, 2T); some pieces have zero length.
    """
    mc, t = q.shape
    qs, order = torch.sort(q, dim=1, stable=True)
    lv = loss.unsqueeze(0).expand(mc, t).gather(1, order)
    a = lv + (1.0 - beta) * qs
    b = lv - beta * qs
    pre_v, pre_i = _first_argmin_scan(b, order)  # P over sorted positions <= k
    suf_v, suf_i = _first_argmin_scan(a.flip(1), order.flip(1))
    suf_v, suf_i = suf_v.flip(1), suf_i.flip(1)  # S over sorted positions >= k
    lo, hi = qs[:, :-1], qs[:, 1:]  # the inner gaps
    p_v, p_i = pre_v[:, :-1], pre_i[:, :-1]
    s_v, s_i = suf_v[:, 1:], suf_i[:, 1:]
    cross = torch.minimum(torch.maximum(s_v - p_v, lo), hi)
    inf = torch.full((mc, 1), math.inf, dtype=torch.float64)
    left = torch.cat([-inf, torch.stack([lo, cross], 2).reshape(mc, -1), qs[:, -1:]], 1)
    right = torch.cat([qs[:, :1], torch.stack([cross, hi], 2).reshape(mc, -1), inf], 1)
    owner = torch.cat([suf_i[:, :1], torch.stack([p_i, s_i], 2).reshape(mc, -1), pre_i[:, -1:]], 1)
    return left, right, owner


def _cqr_quantile_table(
    holdout_lower: Tensor, holdout_upper: Tensor, holdout_y: Tensor, alpha: float
) -> Tensor:
    """``Q[a, b]``: the ``ceil((1 - alpha)(n + 1))``-th smallest CQR score of the pair (a, b).

    The CQR score of hold-out point i is ``max(lo_a(X_i) - Y_i, Y_i - hi_b(X_i))``.
    """
    ta, n = holdout_lower.shape
    tb = holdout_upper.shape[0]
    rank = conformal_rank(n, alpha)
    if rank > n:
        return torch.full((ta, tb), math.inf, dtype=torch.float64)
    table = torch.empty(ta, tb, dtype=torch.float64)
    above = (holdout_y - holdout_upper).unsqueeze(0)  # (1, Tb, n)
    step = max(1, _CHUNK_ELEMENTS // max(tb * n, 1))
    for lo in range(0, ta, step):
        below = (holdout_lower[lo : lo + step] - holdout_y).unsqueeze(1)  # (c, 1, n)
        table[lo : lo + step] = torch.kthvalue(torch.maximum(below, above), rank, dim=2).values
    return table


def _check_quantile_inputs(
    hl: Tensor, hu: Tensor, hy: Tensor, tl: Tensor, tu: Tensor, levels: tuple[float, ...]
) -> None:
    if (
        hl.dim() != 2
        or hl.shape != hu.shape
        or tl.dim() != 2
        or tl.shape != tu.shape
        or tl.shape[0] != hl.shape[0]
        or hy.shape != (hl.shape[1],)
    ):
        raise ValueError(
            "shapes must be holdout_lower/holdout_upper (T, n), holdout_y (n,), "
            f"test_lower/test_upper (T, m); got {tuple(hl.shape)}, {tuple(hu.shape)}, "
            f"{tuple(hy.shape)}, {tuple(tl.shape)}, {tuple(tu.shape)}."
        )
    check_quantile_levels(levels)


def check_quantile_levels(levels: object) -> tuple[float, float]:
    """Validates a (low, high) pair of quantile levels with ``0 < low < high < 1``.

    Args:
        levels: the pair.

    Returns:
        The pair as floats.
    """
    ok = isinstance(levels, list | tuple) and len(levels) == 2
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in levels)
    if not ok or not 0.0 < levels[0] < levels[1] < 1.0:  # type: ignore[index]
        raise ValueError(
            f"`quantiles` must be two levels (low, high) with 0 < low < high < 1, got {levels!r}."
        )
    return float(levels[0]), float(levels[1])  # type: ignore[index]


def ces_quantile_intervals(
    holdout_lower: Tensor,
    holdout_upper: Tensor,
    holdout_y: Tensor,
    test_lower: Tensor,
    test_upper: Tensor,
    alpha: float,
    quantiles: tuple[float, float] = (0.05, 0.95),
    union: bool = False,
    fallback: bool = True,
) -> RegressionIntervals:
    """CES prediction intervals for conformalized quantile regression (CQR).

    The paper's appendix "CES for Quantile Regression": for each level separately, the
    candidate selected for a candidate outcome y minimises the hold-out pinball loss
    augmented with the test point, ``L_t + rho_beta(y - q_t(x))``; y ranges over bins
    where both selections are fixed (the common refinement of the two envelopes, at most
    4T bins). In a bin with lower model a and upper model b, y is in the set when the CQR
    score ``max(lo_a(x) - y, y - hi_b(x))`` is at most ``Q[a, b]``, the
    ``ceil((1 - alpha)(n + 1))``-th smallest hold-out score of that pair, i.e. when
    ``y in [lo_a(x) - Q, hi_b(x) + Q]``. The output is the convex hull of the union (the
    paper's choice) and, on request, the union. Unlike the squared-error case the set can
    be empty; then, with ``fallback`` (the paper's "avoiding empty predictions"), the naive
    interval is returned: it contains the empty set, so the guarantee holds.

    Args:
        holdout_lower: (T, n) each candidate's lower-quantile predictions on the hold-out set.
        holdout_upper: (T, n) upper-quantile predictions.
        holdout_y: (n,) hold-out outcomes.
        test_lower: (T, m) lower-quantile predictions on the test points.
        test_upper: (T, m) upper-quantile predictions.
        alpha: miscoverage level in (0, 1).
        quantiles: the two levels the networks were trained for (the selection losses).
        union: also return the exact union of intervals.
        fallback: replace an empty set by the naive interval (marked in ``fallback``).

    Returns:
        The intervals, computed on centred data (shift- and scale-equivariant).
    """
    _check_alpha(alpha)
    hl, hu, hy, tl, tu = (
        _f64(x) for x in (holdout_lower, holdout_upper, holdout_y, test_lower, test_upper)
    )
    _check_quantile_inputs(hl, hu, hy, tl, tu, tuple(quantiles))
    low, high = float(quantiles[0]), float(quantiles[1])
    centre, (hl, hu, hy, tl, tu) = _finite_centred(
        dict(holdout_lower=hl, holdout_upper=hu, holdout_y=hy, test_lower=tl, test_upper=tu),
        "holdout_y",
    )
    t, m = tl.shape
    loss_lo = pinball_loss(hl, hy.unsqueeze(0), low).sum(dim=1)
    loss_hi = pinball_loss(hu, hy.unsqueeze(0), high).sum(dim=1)
    table = _cqr_quantile_table(hl, hu, hy, alpha)  # (T, T)
    best_lo, best_hi = int(torch.argmin(loss_lo)), int(torch.argmin(loss_hi))
    lower = torch.empty(m, dtype=torch.float64)
    upper = torch.empty(m, dtype=torch.float64)
    u_lo = torch.full((m, 4 * t), math.nan, dtype=torch.float64) if union else None
    u_hi = torch.full((m, 4 * t), math.nan, dtype=torch.float64) if union else None
    step = max(1, _CHUNK_ELEMENTS // max(16 * t, 1))
    for lo in range(0, m, step):
        hi = min(m, lo + step)
        ql, qu = tl[:, lo:hi].T, tu[:, lo:hi].T  # (mc, T)
        mc = hi - lo
        l_left, _, l_owner = _pinball_envelope(ql, loss_lo, low)
        h_left, _, h_owner = _pinball_envelope(qu, loss_hi, high)
        # bins: the common refinement of both envelopes' pieces, in increasing order
        b_left = torch.sort(torch.cat([l_left, h_left], 1), dim=1).values  # (mc, 4T)
        b_right = torch.cat([b_left[:, 1:], torch.full((mc, 1), math.inf)], 1)
        # the piece holding a bin is the last one that starts at or before the bin's start
        # (zero-length pieces start where their successor does, so they are never chosen)
        a = l_owner.gather(1, torch.searchsorted(l_left, b_left, right=True) - 1)
        b = h_owner.gather(1, torch.searchsorted(h_left, b_left, right=True) - 1)
        q = table[a, b]
        seg_lo = torch.maximum(b_left, ql.gather(1, a) - q)
        seg_hi = torch.minimum(b_right, qu.gather(1, b) + q)
        keep = (b_left < b_right) & (seg_lo <= seg_hi)
        inf = torch.full_like(seg_lo, math.inf)
        lower[lo:hi] = torch.where(keep, seg_lo, inf).amin(dim=1)
        upper[lo:hi] = torch.where(keep, seg_hi, -inf).amax(dim=1)
        if union:
            assert u_lo is not None and u_hi is not None
            nan = torch.full_like(seg_lo, math.nan)
            u_lo[lo:hi] = torch.where(keep, seg_lo, nan)
            u_hi[lo:hi] = torch.where(keep, seg_hi, nan)
    empty = lower > upper
    if fallback:
        naive_q = table[best_lo, best_hi]
        lower = torch.where(empty, tl[best_lo] - naive_q, lower)
        upper = torch.where(empty, tu[best_hi] + naive_q, upper)
        if union:
            assert u_lo is not None and u_hi is not None
            u_lo[empty, 0], u_hi[empty, 0] = lower[empty], upper[empty]
    else:
        lower = torch.where(empty, math.nan, lower)
        upper = torch.where(empty, math.nan, upper)
    return RegressionIntervals(
        lower + centre,
        upper + centre,
        None if u_lo is None else u_lo + centre,
        None if u_hi is None else u_hi + centre,
        empty if fallback else None,
    )


def split_quantile_intervals(
    holdout_lower: Tensor,
    holdout_upper: Tensor,
    holdout_y: Tensor,
    test_lower: Tensor,
    test_upper: Tensor,
    alpha: float,
) -> tuple[Tensor, Tensor]:
    """Split CQR (Romano, Patterson, Candes 2019) with one fixed pair of quantile models.

    Args:
        holdout_lower: (n,) lower-quantile predictions on the calibration set.
        holdout_upper: (n,) upper-quantile predictions.
        holdout_y: (n,) outcomes.
        test_lower: (m,) lower-quantile predictions on the test points.
        test_upper: (m,) upper-quantile predictions.
        alpha: miscoverage level in (0, 1).

    Returns:
        ``(lo - Q, hi + Q)`` per test point (empty, lower > upper, when the quantiles cross
        by more than ``-2 Q``).
    """
    _check_alpha(alpha)
    hl, hu, hy = _f64(holdout_lower), _f64(holdout_upper), _f64(holdout_y)
    q = _cqr_quantile_table(hl.unsqueeze(0), hu.unsqueeze(0), hy, alpha)[0, 0]
    return _f64(test_lower) - q, _f64(test_upper) + q
