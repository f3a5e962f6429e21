"""The stopping rules built on the curve predictors.

Every rule returns a :class:`RuleResult`: ``stop``, ``continue`` or ``no_decision`` with a
reason and the evidence. Degenerate curves never raise: they give ``no_decision``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eecontrol.core.checks import check_probability
from eecontrol.core.curves.ensemble import CurveFit, fit_curve


@dataclass(frozen=True)
class RuleResult:
    """The outcome of a stopping rule, with its evidence.

    Args:
        decision: ``stop``, ``continue`` or ``no_decision``.
        reason: one sentence saying why.
        rule: ``in_run`` or ``cross_run``.
        probability: the estimated probability of improving (in-run: of beating the
            run's best by ``min_delta`` before the horizon; cross-run: of the final result
            beating the best finished run).
        predicted_final: the predicted value at the horizon (caller's units).
        lower: lower end of the band at the horizon.
        upper: upper end of the band at the horizon.
        best: the value to beat.
        n_points: points of the curve used.
    """

    decision: str
    reason: str
    rule: str
    probability: float | None = None
    predicted_final: float | None = None
    lower: float | None = None
    upper: float | None = None
    best: float | None = None
    n_points: int = 0

    @property
    def stop(self) -> bool:
        """Whether the rule says stop."""
        return self.decision == "stop"

    def evidence(self) -> dict[str, float | int | str | None]:
        """The numbers of this result as primitives, prefixed by the rule's name."""
        return {
            f"{self.rule}_{k}": v
            for k, v in (
                ("decision", self.decision),
                ("probability", self.probability),
                ("predicted_final", self.predicted_final),
                ("lower", self.lower),
                ("upper", self.upper),
                ("best", self.best),
                ("n_points", self.n_points),
            )
        }


def in_run_rule(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    horizon: float,
    mode: str = "max",
    min_delta: float = 0.0,
    threshold: float = 0.05,
    min_points: int = 5,
    band: float = 0.8,
    min_r2: float = 0.5,
    n_grid: int = 20,
    fit: CurveFit | None = None,
    **fit_kwargs: Any,
) -> RuleResult:
    """Stops a run unlikely to beat its own best by ``min_delta`` before the horizon.

    The probability is the weighted fraction of predicted trajectories (bootstrap draws
    of the ensemble, each observed once with resampled noise) whose best value on
    ``n_grid`` positions between the last observation and the horizon beats the run's
    best by at least ``min_delta``. A calibrated alternative to patience.

    Args:
        x: positions observed so far (strictly increasing, > 0).
        y: the monitored metric.
        horizon: the last position training will reach (same units as ``x``).
        mode: ``max`` or ``min``.
        min_delta: the improvement that counts, >= 0, in the metric's units.
        threshold: stop when the probability is below this, in (0, 1).
        min_points: no decision before this many points (the warm-up), >= 3.
        band: central mass of the reported band at the horizon, in (0, 1).
        min_r2: no decision when the best family explains less of the curve's variance.
        n_grid: future positions scanned for the best value.
        fit: a :func:`fit_curve` result for this very curve, to reuse (else fitted here).
        **fit_kwargs: passed to :func:`fit_curve` (families, n_bootstrap, seed, ...).

    Returns:
        A :class:`RuleResult` of rule ``in_run``.
    """
    check_probability("threshold", threshold)
    check_probability("band", band)
    if min_delta < 0 or not math.isfinite(min_delta):
        raise ValueError(f"`min_delta` must be a number in [0.0, inf), got {min_delta!r}.")
    if min_points < 3:
        raise ValueError(f"`min_points` must be an integer in [3, inf), got {min_points!r}.")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(ya)
    if n < min_points:
        return RuleResult(
            "no_decision", f"warm-up: {n} of min_points={min_points} points", "in_run", n_points=n
        )
    if fit is None:
        fit = fit_curve(xa, ya, mode=mode, **fit_kwargs)
    if not fit.ok:
        return RuleResult("no_decision", fit.reason, "in_run", n_points=n)
    if not (fit.r2 >= min_r2):
        return RuleResult(
            "no_decision",
            f"no family explains the curve (R^2 {fit.r2:.2f} < min_r2={min_r2}): noise, no trend",
            "in_run",
            n_points=n,
        )
    best = float(ya.max() if mode == "max" else ya.min())
    if not horizon > xa[-1]:
        return RuleResult(
            "no_decision",
            f"no training left: the horizon {horizon} is not past the last position {xa[-1]}",
            "in_run",
            best=best,
            n_points=n,
        )
    grid = np.linspace(xa[-1], horizon, n_grid + 1)[1:]
    paths, w = fit.sample_paths(grid, noise=True)
    target = float(fit.to_gain(best + (min_delta if mode == "max" else -min_delta)))
    if fit.bounds is not None and target >= fit._gain_bounds()[1]:
        prob = 0.0  # the best already sits at (or min_delta beyond) the metric's bound
    else:
        prob = float(np.sum(w[paths.max(axis=1) >= target]))
    pred = fit.predict([horizon], quantiles=((1 - band) / 2, (1 + band) / 2))
    lo, hi = (float(v[0]) for v in pred.band(band))
    common = {
        "rule": "in_run",
        "probability": prob,
        "predicted_final": float(pred.mean[0]),
        "lower": min(lo, hi),
        "upper": max(lo, hi),
        "best": best,
        "n_points": n,
    }
    if prob < threshold:
        reason = (
            f"P(beating the best {best:.4g} by {min_delta:g} before {horizon:g}) = {prob:.3f} "
            f"< threshold {threshold:g}; predicted final {pred.mean[0]:.4g} "
            f"({band:.0%} band {min(lo, hi):.4g} .. {max(lo, hi):.4g})"
        )
        return RuleResult("stop", reason, **common)
    return RuleResult("continue", f"P(improvement) = {prob:.3f} >= {threshold:g}", **common)
