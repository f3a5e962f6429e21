"""Conformal p-values and prediction sets for classification with APS scores (CES and split)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from eecontrol.core.conformal._common import _check_alpha, _check_finite, _f64, _select


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
