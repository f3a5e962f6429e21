"""CES prediction intervals for regression with the squared-error selection loss (and split)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from eecontrol.core.conformal._common import (
    _CHUNK_ELEMENTS,
    _check_alpha,
    _f64,
    _finite_centred,
    conformal_rank,
)


@dataclass(frozen=True)
class RegressionIntervals:
    """CES prediction intervals for regression.

    Args:
        lower: (m,) lower end of the convex hull (``-inf`` for an unbounded set).
        upper: (m,) upper end of the convex hull.
        union_lower: (m, P) lower ends of the exact set's pieces sorted by position (NaN
            where a piece contributes nothing; P = T for squared error, 4T for quantile
            regression); ``None`` unless asked for.
        union_upper: (m, P) matching upper ends.
        fallback: (m,) bool, quantile regression only: the CES set was empty and the naive
            interval was returned instead (still valid); ``None`` elsewhere. An empty set
            without fallback has NaN ends.
    """

    lower: Tensor
    upper: Tensor
    union_lower: Tensor | None
    union_upper: Tensor | None
    fallback: Tensor | None = None

    def width(self) -> Tensor:
        """Hull widths (inf for unbounded sets, 0 for an empty set)."""
        w = self.upper - self.lower
        return torch.where(torch.isnan(w), 0.0, w)

    def union(self, i: int) -> list[tuple[float, float]]:
        """The exact set of test point ``i`` as a list of disjoint closed intervals."""
        if self.union_lower is None or self.union_upper is None:
            raise ValueError("the union was not computed: call with union=True.")
        pieces: list[tuple[float, float]] = []
        for lo, hi in zip(self.union_lower[i].tolist(), self.union_upper[i].tolist()):
            if math.isnan(lo):
                continue
            if pieces and lo <= pieces[-1][1]:
                pieces[-1] = (pieces[-1][0], max(pieces[-1][1], hi))
            else:
                pieces.append((lo, hi))
        return pieces


def _quantiles(residuals: Tensor, alpha: float) -> Tensor:
    """Per candidate, the conformal quantile of absolute residuals (T, n) -> (T,)."""
    n = residuals.shape[1]
    rank = conformal_rank(n, alpha)
    if rank > n:
        return torch.full((residuals.shape[0],), math.inf, dtype=torch.float64)
    return torch.sort(residuals, dim=1).values[:, rank - 1]


def _knots(m_a: Tensor, l_a: Tensor, m_b: Tensor, l_b: Tensor) -> Tensor:
    """Where ``l_a + (y - m_a)^2 = l_b + (y - m_b)^2`` (``m_a != m_b``), without cancellation.

    ``(m_a + m_b) / 2 + (l_b - l_a) / (2 (m_b - m_a))``: no ``m^2`` term, so nothing of the
    outcome's offset is squared away (the intercept form ``l + m^2`` loses every digit of the
    spread once the offset exceeds about 1e8 times it).
    """
    return 0.5 * (m_a + m_b) + (l_b - l_a) / (2.0 * (m_b - m_a))


def _envelope_regions(mu: Tensor, loss: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where each parabola ``loss_t + (y - m_t)^2`` is the lowest, for many families at once.

    The parabolas differ by lines (``loss_t + m_t^2 - 2 m_t y``), so this is a monotone-stack
    lower envelope of lines sorted by slope, vectorised over the rows: the loop runs over
    candidates, never over test points. Every comparison is between knots computed by
    :func:`_knots`, so the result is shift- and scale-equivariant up to rounding.

    Args:
        mu: (mc, T) the candidates' predictions, one family per row.
        loss: (T,) or (mc, T) hold-out losses.

    Returns:
        ``left``, ``right`` (the piece of y each candidate owns) and ``owns`` (whether it
        owns a piece of positive length), all (mc, T) in candidate order.
    """
    mc, t = mu.shape
    lv = loss.expand(mc, t)
    rows = torch.arange(mc)
    order = torch.argsort(lv, dim=1, stable=True)
    order = order.gather(1, torch.argsort(mu.gather(1, order), dim=1, stable=True))  # m, L, index
    ms, ls = mu.gather(1, order), lv.gather(1, order)
    stack = torch.zeros(mc, t, dtype=torch.long)  # positions in the sorted order
    h = torch.zeros(mc, dtype=torch.long)
    for i in range(t):
        mb, lb = ms[:, i], ls[:, i]
        top = stack[rows, (h - 1).clamp_min(0)]
        active = (h == 0) | (ms[rows, top] != mb)  # an equal slope never beats the lower line
        idx = rows[active & (h >= 2)]  # rows whose top line may be hidden by line i
        while idx.numel():
            hh = h[idx]
            a, z = stack[idx, hh - 1], stack[idx, hh - 2]
            mz, lz = ms[idx, z], ls[idx, z]
            # the top a is hidden when the new line meets z no later than a does
            pop = _knots(mz, lz, mb[idx], lb[idx]) <= _knots(mz, lz, ms[idx, a], ls[idx, a])
            idx = idx[pop]
            h[idx] -= 1
            idx = idx[h[idx] >= 2]
        stack[rows[active], h[active]] = i
        h = h + active.long()
    valid = torch.arange(t).unsqueeze(0) < h.unsqueeze(1)
    hm, hl = ms.gather(1, stack), ls.gather(1, stack)
    knots = _knots(hm[:, :-1], hl[:, :-1], hm[:, 1:], hl[:, 1:])  # between hull neighbours
    inf = torch.full((mc, 1), math.inf, dtype=torch.float64)
    pieces_left = torch.cat([-inf, knots], dim=1)
    last = torch.arange(t).unsqueeze(0) == (h - 1).unsqueeze(1)
    pieces_right = torch.where(last, math.inf, torch.cat([knots, inf], dim=1))
    candidate = torch.where(valid, order.gather(1, stack), t)  # invalid slots -> a spare column
    left = torch.full((mc, t + 1), -math.inf, dtype=torch.float64).scatter(
        1, candidate, pieces_left
    )
    right = torch.full((mc, t + 1), -math.inf, dtype=torch.float64).scatter(
        1, candidate, pieces_right
    )
    owned = torch.zeros(mc, t + 1, dtype=torch.bool).scatter(1, candidate, valid)
    left, right, owned = left[:, :t], right[:, :t], owned[:, :t]
    return left, right, owned & (left < right)


def ces_regression_intervals(
    holdout_pred: Tensor,
    holdout_y: Tensor,
    test_pred: Tensor,
    alpha: float,
    union: bool = False,
) -> RegressionIntervals:
    """CES prediction intervals for regression with the squared-error selection loss.

    The selected model as a function of the candidate outcome y minimises
    ``L_t + (y - m_t)^2``, i.e. the lower envelope of the lines ``(L_t + m_t^2) - 2 m_t y``:
    candidate t owns the interval of y between its knots with the candidates of smaller
    and larger ``m_t`` (knot ``(m_a + m_b)/2 + (L_b - L_a) / (2 (m_b - m_a))``). Within its
    piece, y is in the set when ``|y - m_t| <= Q_t``. The output is the convex hull of the
    union (the paper's choice) and, on request, the union itself.

    Args:
        holdout_pred: (T, n) predictions of each candidate on the hold-out set.
        holdout_y: (n,) hold-out outcomes.
        test_pred: (T, m) predictions on the test points.
        alpha: miscoverage level in (0, 1).
        union: also return the exact union of intervals.

    The set is never empty (so the paper's empty-set fallback is never needed here): at
    ``y = m_b`` for the candidate b with the smallest hold-out loss, every other candidate
    has ``L_t + (m_b - m_t)^2 >= L_b``, so b owns ``m_b`` and ``m_b`` is in its interval.

    Returns:
        The intervals.
    """
    _check_alpha(alpha)
    hp, hy, tp = _f64(holdout_pred), _f64(holdout_y), _f64(test_pred)
    if hp.dim() != 2 or tp.dim() != 2 or hp.shape[0] != tp.shape[0] or hy.shape != (hp.shape[1],):
        raise ValueError(
            "shapes must be holdout_pred (T, n), holdout_y (n,), test_pred (T, m); got "
            f"{tuple(hp.shape)}, {tuple(hy.shape)}, {tuple(tp.shape)}."
        )
    t, m = tp.shape
    centre, (hp, hy, tp) = _finite_centred(
        dict(holdout_pred=hp, holdout_y=hy, test_pred=tp), "holdout_y"
    )
    residuals = (hy.unsqueeze(0) - hp).abs()
    loss = (residuals**2).sum(dim=1)  # (T,)
    q = _quantiles(residuals, alpha)  # (T,)
    lower = torch.empty(m, dtype=torch.float64)
    upper = torch.empty(m, dtype=torch.float64)
    u_lo = torch.full((m, t), math.nan, dtype=torch.float64) if union else None
    u_hi = torch.full((m, t), math.nan, dtype=torch.float64) if union else None
    step = max(1, _CHUNK_ELEMENTS // max(8 * t, 1))
    for lo in range(0, m, step):
        hi = min(m, lo + step)
        mu = tp[:, lo:hi].T  # (mc, T)
        left, right, owns = _envelope_regions(mu, loss)
        seg_lo = torch.maximum(left, mu - q)
        seg_hi = torch.minimum(right, mu + q)
        keep = owns & (seg_lo <= seg_hi)
        inf = torch.full_like(seg_lo, math.inf)
        lower[lo:hi] = torch.where(keep, seg_lo, inf).amin(dim=1)
        upper[lo:hi] = torch.where(keep, seg_hi, -inf).amax(dim=1)
        if union:
            assert u_lo is not None and u_hi is not None
            order = torch.argsort(torch.where(keep, seg_lo, inf), dim=1)
            nan = torch.full_like(seg_lo, math.nan)
            u_lo[lo:hi] = torch.where(keep, seg_lo, nan).gather(1, order)
            u_hi[lo:hi] = torch.where(keep, seg_hi, nan).gather(1, order)
    shift = lambda x: None if x is None else x + centre  # noqa: E731
    return RegressionIntervals(lower + centre, upper + centre, shift(u_lo), shift(u_hi))


def split_regression_intervals(
    holdout_pred: Tensor, holdout_y: Tensor, test_pred: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """Split-conformal intervals ``m(x) +- Q`` with one fixed model: (n,), (n,), (m,)."""
    hp, hy, tp = _f64(holdout_pred), _f64(holdout_y), _f64(test_pred)
    q = _quantiles((hy - hp).abs().unsqueeze(0), alpha)[0]
    return tp - q, tp + q
