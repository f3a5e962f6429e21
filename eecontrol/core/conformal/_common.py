"""Shared pieces of the CES core: argument checks, float64 conversion, ranks, selection."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

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


def _select(holdout_loss: Tensor, test_loss: Tensor) -> Tensor:
    """``argmin_t holdout_loss[t] + test_loss[t, ...]`` (first index on ties)."""
    shape = (-1,) + (1,) * (test_loss.dim() - 1)
    return torch.argmin(holdout_loss.view(shape) + test_loss, dim=0)


def _centre(*tensors: Tensor) -> float:
    """A shift for the data: the median of the first tensor (an element, so exact).

    Working on ``x - centre`` keeps every computation at the scale of the spread: with
    outcomes near 1e8 and unit spread, ``x - centre`` is exact (Sterbenz) and nothing
    downstream cancels. The results are shifted back at the end.
    """
    first = tensors[0].reshape(-1)
    return float(first.median()) if first.numel() else 0.0


def _finite_centred(named: Mapping[str, Tensor], outcome: str) -> tuple[float, list[Tensor]]:
    """Checks that every named tensor is finite, then shifts them all by :func:`_centre` of
    the tensor named ``outcome``.

    Returns:
        The centre and the shifted tensors, in the order of ``named``.
    """
    for name, x in named.items():
        _check_finite(name, x)
    centre = _centre(named[outcome])
    return centre, [x - centre for x in named.values()]
