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
    "ces_regression_intervals",
    "conformal_rank",
    "prediction_sets",
    "split_classification_p_values",
    "split_outlier_p_values",
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
        union_lower: (m, T) lower ends of the exact set's pieces sorted by position (NaN
            where a candidate contributes nothing); ``None`` unless asked for.
        union_upper: (m, T) matching upper ends.
    """

    lower: Tensor
    upper: Tensor
    union_lower: Tensor | None
    union_upper: Tensor | None

    def width(self) -> Tensor:
        """Hull widths (inf for unbounded sets)."""
        return self.upper - self.lower

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


def _envelope_regions(mu: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where each line ``c_t - 2 m_t y`` is the lowest, for many families at once.

    A monotone-stack lower envelope (lines sorted by slope), vectorised over the rows:
    the loop runs over candidates, never over test points.

    Args:
        mu: (mc, T) slopes / 2 (the candidates' predictions), one family per row.
        c: (mc, T) intercepts.

    Returns:
        ``left``, ``right`` (the piece of y each candidate owns) and ``owns`` (whether it
        owns a piece of positive length), all (mc, T) in candidate order.
    """
    mc, t = mu.shape
    rows = torch.arange(mc)
    order = torch.argsort(c, dim=1, stable=True)
    order = order.gather(
        1, torch.argsort(mu.gather(1, order), dim=1, stable=True)
    )  # by m, c, index
    ms, cs = mu.gather(1, order), c.gather(1, order)
    stack = torch.zeros(mc, t, dtype=torch.long)  # positions in the sorted order
    h = torch.zeros(mc, dtype=torch.long)
    for i in range(t):
        mb, cb = ms[:, i], cs[:, i]
        top = stack[rows, (h - 1).clamp_min(0)]
        active = (h == 0) | (ms[rows, top] != mb)  # an equal slope never beats the lower line
        idx = rows[active & (h >= 2)]  # rows whose top line may be hidden by line i
        while idx.numel():
            hh = h[idx]
            a, z = stack[idx, hh - 1], stack[idx, hh - 2]
            mz, cz = ms[idx, z], cs[idx, z]
            pop = (cb[idx] - cz) * (ms[idx, a] - mz) <= (cs[idx, a] - cz) * (mb[idx] - mz)
            idx = idx[pop]
            h[idx] -= 1
            idx = idx[h[idx] >= 2]
        stack[rows[active], h[active]] = i
        h = h + active.long()
    valid = torch.arange(t).unsqueeze(0) < h.unsqueeze(1)
    hm, hc = ms.gather(1, stack), cs.gather(1, stack)
    knots = (hc[:, 1:] - hc[:, :-1]) / (2.0 * (hm[:, 1:] - hm[:, :-1]))  # between hull neighbours
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
    for name, x in (("holdout_pred", hp), ("holdout_y", hy), ("test_pred", tp)):
        _check_finite(name, x)
    t, m = tp.shape
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
        c = loss.unsqueeze(0) + mu**2  # intercepts of the lines c_t - 2 m_t y
        left, right, owns = _envelope_regions(mu, c)
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
    return RegressionIntervals(lower, upper, u_lo, u_hi)


def split_regression_intervals(
    holdout_pred: Tensor, holdout_y: Tensor, test_pred: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """Split-conformal intervals ``m(x) +- Q`` with one fixed model: (n,), (n,), (m,)."""
    hp, hy, tp = _f64(holdout_pred), _f64(holdout_y), _f64(test_pred)
    q = _quantiles((hy - hp).abs().unsqueeze(0), alpha)[0]
    return tp - q, tp + q
