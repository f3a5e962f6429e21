"""Conformal p-values for outlier detection (CES and split) and Benjamini-Hochberg selection."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eecontrol.core.conformal._common import _check_finite, _count_at_least, _f64, _select


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
