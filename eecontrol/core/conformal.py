"""Conformalized early stopping (CES): exact conformal inference from one early-stopped run.

Liang, Zhou, Sesia, "Conformal inference is (almost) free for neural networks trained
with early stopping", ICML 2023.

A run stores T candidate models; on the hold-out ("es-cal") set of n points each has
per-sample outputs and a hold-out loss ``L_t`` (a sum over the whole set). For a test point
(and, for classification and regression, each candidate label ``y``) CES selects
``t* = argmin_t L_t + loss_t(test point)`` and computes the conformal p-value of the test
point with model ``t*``'s calibration scores on the same hold-out set. Every function here
is vectorised over test points, candidate labels and candidates (torch), chunked over test
points only to bound memory.

Conventions: nonconformity scores are "larger = stranger" everywhere; a p-value is
``(1 + #{hold-out scores >= test score}) / (n + 1)``; a set keeps the labels with
``p > alpha``; regression intervals use the ``ceil((1 - alpha)(n + 1))``-th smallest
absolute residual, which is infinite (the whole line) when that rank exceeds n.
Ties in the argmin go to the earliest candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ClassificationPValues",
    "OutlierPValues",
    "RegressionIntervals",
    "aps_scores",
    "benjamini_hochberg",
    "ces_classification_p_values",
    "ces_outlier_p_values",
    "ces_quantile_intervals",
    "ces_regression_intervals",
    "check_quantile_levels",
    "conformal_rank",
    "naive_corrected_alpha",
    "pinball_loss",
    "prediction_sets",
    "split_classification_p_values",
    "split_outlier_p_values",
    "split_quantile_intervals",
    "split_regression_intervals",
]

_CHUNK_ELEMENTS = 2**24  # bound on the largest temporary tensor, in elements


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha!r}.")


def _f64(x: Tensor) -> Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _check_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"`{name}` has {bad} non-finite values (NaN or inf); CES needs finite outputs."
        )


def conformal_rank(n: int, alpha: float) -> int:
    """The rank ``ceil((1 - alpha)(n + 1))`` of the calibration quantile (may exceed n).

    Args:
        n: number of calibration points.
        alpha: miscoverage level in (0, 1).

    Returns:
        The 1-based rank; larger than ``n`` means the quantile is infinite.
    """
    _check_alpha(alpha)
    # round() guards against 0.9 * 11 = 9.900000000000002 style float error
    return math.ceil(round((1.0 - alpha) * (n + 1), 9))


def _count_at_least(sorted_asc: Tensor, values: Tensor) -> Tensor:
    """Per row, how many entries of ``sorted_asc`` (R, n) are >= each of ``values`` (R, M)."""
    n = sorted_asc.shape[-1]
    return n - torch.searchsorted(sorted_asc.contiguous(), values.contiguous(), side="left")


def aps_scores(probs: Tensor, u: Tensor | None = None) -> Tensor:
    """Adaptive prediction set (APS) nonconformity scores for every label.

    Romano, Sesia, Candes (2020): ``E(x, y) = sum_{k: p_k > p_y} p_k + u * p_y`` (larger =
    stranger), randomised by ``u`` in [0, 1] (``u = 1`` is the non-randomised score).

    Args:
        probs: class probabilities, shape (..., K).
        u: uniform draws of shape (...) (one per point), or None for ``u = 1``.

    Returns:
        Scores of shape (..., K): entry ``y`` is the score of label ``y``.
    """
    p = _f64(probs)
    desc = torch.sort(p, dim=-1, descending=True).values
    exclusive = torch.cumsum(desc, dim=-1) - desc  # sum of the entries before each position
    # number of probabilities strictly greater than p_y = first position of p_y in desc
    pos = torch.searchsorted((-desc).contiguous(), (-p).contiguous(), side="left")
    greater = torch.gather(exclusive, -1, pos)
    weight = torch.ones_like(p[..., 0]) if u is None else _f64(u)
    return greater + weight.unsqueeze(-1) * p


def _select(holdout_loss: Tensor, test_loss: Tensor) -> Tensor:
    """``argmin_t holdout_loss[t] + test_loss[t, ...]`` (first index on ties)."""
    shape = (-1,) + (1,) * (test_loss.dim() - 1)
    return torch.argmin(holdout_loss.view(shape) + test_loss, dim=0)


@dataclass(frozen=True)
class OutlierPValues:
    """Conformal p-values for outlier detection.

    Args:
        p_values: shape (m,), in [1/(n+1), 1]; small means "outlier".
        selected: the candidate index used for each test point, shape (m,).
    """

    p_values: Tensor
    selected: Tensor


def ces_outlier_p_values(
    holdout_loss: Tensor, holdout_scores: Tensor, test_loss: Tensor, test_scores: Tensor
) -> OutlierPValues:
    """CES p-values for outlier detection (the paper's Algorithm for one-class models).

    Args:
        holdout_loss: per-sample hold-out losses of each candidate, shape (T, n).
        holdout_scores: hold-out nonconformity scores (larger = more outlying), (T, n).
        test_loss: each candidate's loss on each test point, shape (T, m).
        test_scores: each candidate's score of each test point, shape (T, m).

    Returns:
        The p-values and the selected candidate per test point.
    """
    hl, hs, tl, ts = (_f64(x) for x in (holdout_loss, holdout_scores, test_loss, test_scores))
    for name, x in (
        ("holdout_loss", hl),
        ("holdout_scores", hs),
        ("test_loss", tl),
        ("test_scores", ts),
    ):
        _check_finite(name, x)
    if hl.shape != hs.shape or tl.shape != ts.shape or hl.shape[0] != tl.shape[0]:
        raise ValueError(
            "shapes must be holdout (T, n) and test (T, m) with the same T; got "
            f"holdout_loss {tuple(hl.shape)}, holdout_scores {tuple(hs.shape)}, "
            f"test_loss {tuple(tl.shape)}, test_scores {tuple(ts.shape)}."
        )
    n = hs.shape[1]
    selected = _select(hl.sum(dim=1), tl)
    counts = _count_at_least(torch.sort(hs, dim=1).values, ts)  # (T, m)
    chosen = counts.gather(0, selected.unsqueeze(0)).squeeze(0)
    return OutlierPValues((1.0 + chosen.to(torch.float64)) / (n + 1), selected)


def split_outlier_p_values(holdout_scores: Tensor, test_scores: Tensor) -> Tensor:
    """Split-conformal p-values with one fixed model: holdout (n,) and test (m,) scores."""
    hs, ts = _f64(holdout_scores), _f64(test_scores)
    counts = _count_at_least(torch.sort(hs).values.unsqueeze(0), ts.unsqueeze(0)).squeeze(0)
    return (1.0 + counts.to(torch.float64)) / (hs.numel() + 1)


def benjamini_hochberg(p_values: Tensor, q: float) -> Tensor:
    """Benjamini-Hochberg selection at false discovery rate ``q``.

    Args:
        p_values: shape (m,).
        q: target FDR in (0, 1).

    Returns:
        A boolean mask of the rejected (selected as outliers) test points.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"`q` must be in (0, 1), got {q!r}.")
    p = _f64(p_values)
    m = p.numel()
    order = torch.argsort(p)
    thresholds = q * torch.arange(1, m + 1, dtype=torch.float64) / m
    below = p[order] <= thresholds
    mask = torch.zeros(m, dtype=torch.bool)
    if below.any():
        k = int(torch.nonzero(below).max()) + 1
        mask[order[:k]] = True
    return mask


@dataclass(frozen=True)
class ClassificationPValues:
    """Conformal p-values for every test point and candidate label.

    Args:
        p_values: shape (m, K).
        selected: the candidate used for each (test point, label), shape (m, K).
    """

    p_values: Tensor
    selected: Tensor


def _calibration_table(
    cal_scores: Tensor, cal_labels: Tensor, num_classes: int, conditional: bool
) -> tuple[Tensor, Tensor]:
    """Sorted hold-out scores to count against, built once per call.

    Args:
        cal_scores: (T, n) scores of the hold-out points at their true labels.
        cal_labels: (n,).
        num_classes: K.
        conditional: one row per (candidate, label) with that label's points only.

    Returns:
        Sorted rows, (T, n) marginal or (T * K, max n_y) label-conditional with ``-inf``
        padding first (never counted), and the p-value denominators (K,).
    """
    t, n = cal_scores.shape
    k = num_classes
    if not conditional:
        return torch.sort(cal_scores, dim=1).values, torch.full((k,), n + 1.0, dtype=torch.float64)
    n_y = torch.bincount(cal_labels, minlength=k)
    padded = torch.full((t, k, max(int(n_y.max()) if n else 0, 1)), -math.inf, dtype=torch.float64)
    order = torch.argsort(cal_labels, stable=True)
    labels_sorted = cal_labels[order]
    slot = torch.arange(n) - (torch.cumsum(n_y, 0) - n_y)[labels_sorted]
    padded[:, labels_sorted, slot] = cal_scores[:, order]
    padded = torch.sort(padded, dim=2).values
    return padded.reshape(t * k, -1), n_y.to(torch.float64) + 1.0


def _count_at_least_rows(table: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """How many entries of row ``rows[i]`` of ``table`` (R, w) are >= ``values[i]``.

    Exact and vectorised: one lexicographic sort of the table entries and the queries by
    (row, value, query-before-entry), then a running count of entries. ``-inf`` padding
    in the table is never counted.
    """
    r, w = table.shape
    m = values.numel()
    vals = torch.cat([table.reshape(-1), values.reshape(-1)])
    rws = torch.cat([torch.arange(r).repeat_interleave(w), rows.reshape(-1)])
    is_entry = torch.cat([torch.ones(r * w, dtype=torch.long), torch.zeros(m, dtype=torch.long)])
    order = torch.argsort(is_entry, stable=True)
    order = order[torch.argsort(vals[order], stable=True)]
    order = order[torch.argsort(rws[order], stable=True)]
    before = torch.cumsum(is_entry[order], 0)  # entries at or before each sorted position
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel())
    query_pos = position[r * w :]
    less = before[query_pos] - rows.reshape(-1) * w  # entries of the row strictly below
    return w - less


def _check_classification(probs: Tensor, labels: Tensor, test_probs: Tensor) -> None:
    if probs.dim() != 3 or test_probs.dim() != 3:
        raise ValueError(
            f"probabilities must be (T, n, K) and (T, m, K); got {tuple(probs.shape)} and "
            f"{tuple(test_probs.shape)}."
        )
    if probs.shape[0] != test_probs.shape[0] or probs.shape[2] != test_probs.shape[2]:
        raise ValueError(
            f"hold-out {tuple(probs.shape)} and test {tuple(test_probs.shape)} probabilities "
            "must have the same number of candidates T and classes K."
        )
    if labels.shape != (probs.shape[1],):
        raise ValueError(
            f"`holdout_labels` must have shape ({probs.shape[1]},), got {tuple(labels.shape)}."
        )
    k = probs.shape[2]
    if labels.numel() and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"`holdout_labels` must be in [0, {k - 1}].")
    _check_finite("holdout_probs", probs)
    _check_finite("test_probs", test_probs)


def ces_classification_p_values(
    holdout_probs: Tensor,
    holdout_labels: Tensor,
    test_probs: Tensor,
    holdout_u: Tensor | None = None,
    test_u: Tensor | None = None,
    conditional: bool = True,
) -> ClassificationPValues:
    """CES p-values for multi-class classification with APS scores.

    For each test point j and label y: ``t* = argmin_t L_t - log p_t(y | x_j)`` with
    ``L_t = sum_i -log p_t(y_i | x_i)`` over the whole hold-out set, then the APS p-value
    of (x_j, y) under model t*, against the hold-out points of class y (label-conditional,
    the paper's main version) or all hold-out points (marginal, its appendix).

    Args:
        holdout_probs: (T, n, K) class probabilities of each candidate on the hold-out set.
        holdout_labels: (n,) integer labels.
        test_probs: (T, m, K) class probabilities on the test points.
        holdout_u: (n,) APS randomisation per hold-out point (drawn once, fixed seed), or
            None for non-randomised scores.
        test_u: (m,) APS randomisation per test point, or None.
        conditional: label-conditional (True) or marginal (False) calibration.

    Returns:
        p-values (m, K) and the selected candidate per (test point, label).
    """
    probs, test = _f64(holdout_probs), _f64(test_probs)
    labels = torch.as_tensor(holdout_labels).long()
    _check_classification(probs, labels, test)
    t, n, k = probs.shape
    m = test.shape[1]
    tiny = torch.finfo(torch.float64).tiny
    cal_p_true = probs.gather(2, labels.view(1, n, 1).expand(t, n, 1)).squeeze(2)
    holdout_loss = -torch.log(cal_p_true.clamp_min(tiny)).sum(dim=1)  # (T,)
    cal_scores = aps_scores(probs, None if holdout_u is None else _f64(holdout_u).expand(t, n))
    cal_scores = cal_scores.gather(2, labels.view(1, n, 1).expand(t, n, 1)).squeeze(2)  # (T, n)
    table, denom = _calibration_table(cal_scores, labels, k, conditional)
    # select per (test point, label), then score each pair under its own selected model only
    selected = _select(holdout_loss, -torch.log(test.clamp_min(tiny)))  # (m, K)
    rows = test.permute(1, 0, 2).gather(1, selected.unsqueeze(2).expand(m, k, k))  # (m, K, K)
    p_own = rows.diagonal(dim1=1, dim2=2)  # p_{t*(j,y)}(y | x_j), (m, K)
    greater = (rows * (rows > p_own.unsqueeze(2))).sum(dim=2)
    weight = torch.ones(m, 1, dtype=torch.float64) if test_u is None else _f64(test_u).view(m, 1)
    test_scores = greater + weight * p_own
    labels_grid = torch.arange(k).expand(m, k)
    table_rows = selected * k + labels_grid if conditional else selected
    counts = _count_at_least_rows(table, table_rows.reshape(-1), test_scores.reshape(-1)).view(m, k)
    p_values = (1.0 + counts.to(torch.float64)) / denom.view(1, k)
    return ClassificationPValues(p_values, selected)


def split_classification_p_values(
    holdout_probs: Tensor,
    holdout_labels: Tensor,
    test_probs: Tensor,
    holdout_u: Tensor | None = None,
    test_u: Tensor | None = None,
    conditional: bool = True,
) -> Tensor:
    """Split-conformal APS p-values (m, K) with one fixed model: probs (n, K) and (m, K)."""
    result = ces_classification_p_values(
        _f64(holdout_probs).unsqueeze(0),
        holdout_labels,
        _f64(test_probs).unsqueeze(0),
        holdout_u,
        test_u,
        conditional,
    )
    return result.p_values


def prediction_sets(p_values: Tensor, alpha: float) -> Tensor:
    """The labels whose p-value exceeds ``alpha``: a boolean mask (m, K)."""
    _check_alpha(alpha)
    return p_values > alpha


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


def _centre(*tensors: Tensor) -> float:
    """A shift for the data: the median of the first tensor (an element, so exact).

    Working on ``x - centre`` keeps every computation at the scale of the spread: with
    outcomes near 1e8 and unit spread, ``x - centre`` is exact (Sterbenz) and nothing
    downstream cancels. The results are shifted back at the end.
    """
    first = tensors[0].reshape(-1)
    return float(first.median()) if first.numel() else 0.0


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
    for name, x in (("holdout_pred", hp), ("holdout_y", hy), ("test_pred", tp)):
        _check_finite(name, x)
    t, m = tp.shape
    centre = _centre(hy)
    hp, hy, tp = hp - centre, hy - centre, tp - centre
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


# --- conformalized quantile regression (CQR) ---------------------------------------------


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
    for name, x in (
        ("holdout_lower", hl),
        ("holdout_upper", hu),
        ("holdout_y", hy),
        ("test_lower", tl),
        ("test_upper", tu),
    ):
        _check_finite(name, x)


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
    centre = _centre(hy)
    hl, hu, hy, tl, tu = (x - centre for x in (hl, hu, hy, tl, tu))
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


def naive_corrected_alpha(n_candidates: int, n: int, alpha: float, b: float = 100.0) -> float:
    """The "naive + theory" level: the largest alpha' whose naive coverage bound is >= 1 - alpha.

    The paper's appendix "Theoretical Analysis of the Naive Benchmark": calibrating the
    best of T candidates on the same n hold-out points at level alpha' covers with
    probability at least the hybrid bound ``max(Markov, DKW)``. Markov:
    ``(1 - 1/b) BetaInv(1 / (b T); n + 1 - l, l)`` with ``l = floor(alpha' (n + 1))``;
    DKW (Yang and Kuchibhotla): ``(1 + 1/n)(1 - alpha') - (sqrt(log(2T) / 2) + c(T)) / sqrt(n)``
    with ``c(T) = 1 / (sqrt 2 (sqrt(log 2T) + sqrt(log 2T + 4 / pi)))``. The naive method
    run at the returned level is valid (conservatively).

    Args:
        n_candidates: T, the number of candidates the naive method chose from.
        n: hold-out points.
        alpha: the target miscoverage level in (0, 1).
        b: the Markov bound's free constant (the paper uses 100), > 1.

    Returns:
        The corrected level in [0, alpha]; 0 means no finite interval is valid (the whole
        line), where the authors' code clips to 1/n instead.
    """
    from scipy.stats import beta as beta_dist

    _check_alpha(alpha)
    if n_candidates < 1 or n < 1 or not b > 1:
        raise ValueError(f"need n_candidates >= 1, n >= 1 and b > 1; got {n_candidates}, {n}, {b}.")
    log2t = math.log(2 * n_candidates)
    err = math.sqrt(log2t / 2) + 1.0 / (
        math.sqrt(2.0) * (math.sqrt(log2t) + math.sqrt(log2t + 4 / math.pi))
    )
    dkw = 1.0 - (1.0 - alpha + err / math.sqrt(n)) / (1.0 + 1.0 / n)
    ls = torch.arange(1, n + 1, dtype=torch.float64).numpy()
    markov = (1 - 1 / b) * beta_dist.ppf(1 / (b * n_candidates), n + 1 - ls, ls)
    valid = ls[markov >= 1 - alpha]
    markov_alpha = float(valid.max()) / (n + 1) if valid.size else 0.0
    return float(min(alpha, max(0.0, dkw, markov_alpha)))
