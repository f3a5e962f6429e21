"""Selection among candidates: hold-out losses per task, the baselines' choices, the naive correction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from eecontrol.core.conformal._common import _check_alpha
from eecontrol.core.conformal.cqr import pinball_loss

TASKS = ("classification", "regression", "quantile", "outlier")
METHODS = ("ces", "naive", "naive_theory", "data_splitting", "full")


def quantile_losses(
    outputs: Tensor, targets: Tensor, quantiles: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """Per candidate, the hold-out pinball losses of the lower and the upper quantile.

    Args:
        outputs: (T, n, 2) each candidate's (lower, upper) quantiles on the hold-out points.
        targets: (n,) outcomes.
        quantiles: the (low, high) levels the networks were trained for.

    Returns:
        The lower and the upper losses, each (T,).
    """
    y = targets.to(torch.float64)
    lo, hi = quantiles
    return pinball_loss(outputs[..., 0], y, lo).sum(1), pinball_loss(outputs[..., 1], y, hi).sum(1)


def holdout_losses(
    task: str, outputs: Tensor, targets: Tensor | None, quantiles: Sequence[float]
) -> Tensor:
    """Each candidate's selection loss summed over the hold-out points (the paper's ``L_t``).

    Negative log-likelihood (classification), squared error (regression), the two pinball
    losses (quantile) or the sum of the outlier scores (outlier).

    Args:
        task: ``classification``, ``regression``, ``quantile`` or ``outlier``.
        outputs: (T, n, ...) float64 per-sample outputs of the candidates.
        targets: (n,) labels or outcomes; None for ``outlier``.
        quantiles: the (low, high) levels of ``quantile``.

    Returns:
        The losses, (T,).
    """
    if task == "outlier":
        return outputs.sum(1)
    assert targets is not None
    if task == "classification":
        y = targets.long()
        p = outputs.gather(2, y.view(1, -1, 1).expand(outputs.shape[0], -1, 1)).squeeze(2)
        return -torch.log(p.clamp_min(torch.finfo(torch.float64).tiny)).sum(1)
    if task == "regression":
        return ((outputs - targets.to(torch.float64)) ** 2).sum(1)
    lo, hi = quantile_losses(outputs, targets, quantiles)
    return lo + hi


def split_indices(n: int, method: str, seed: int) -> tuple[Tensor, Tensor]:
    """Selection and calibration indices of a method (halves for ``data_splitting``).

    Args:
        n: hold-out points.
        method: one of ``METHODS``.
        seed: seed of the data-splitting halves.

    Returns:
        The indices the candidate is selected on and those it is calibrated on.
    """
    if method != "data_splitting":
        return torch.arange(n), torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], torch.sort(perm[n // 2 :]).values


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
