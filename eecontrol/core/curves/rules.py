"""The stopping rules built on the curve predictors.

Every rule returns a :class:`RuleResult`: ``stop``, ``continue`` or ``no_decision`` with a
reason and the evidence. Degenerate curves never raise: they give ``no_decision``.

Rules that compare a run with its own best (the convergence rule, the ensemble's in-run
rule) never stop it at a validation that set that best (beat the previous best by more than
``min_delta``, as ``EarlyStopping`` counts an improvement): the run just improved, the
opposite of the evidence a stop claims (issue 24, E1). A target beyond the metric's
bound (``best + min_delta`` past 1.0 for an accuracy) is clipped to the bound and reaching
the bound counts as improving; a best at the bound has nothing left to gain (E2). The
forecast rules take ``forecaster=`` (:mod:`~eecontrol.core.curves.forecasters`) and return
the predicted curve they decided with (:attr:`RuleResult.curve`), so what is reported is
what decided (E6); with fewer points than the forecaster needs they say ``blind`` (E4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from eecontrol.core.checks import check_rule_args
from eecontrol.core.curves.ensemble import CurveFit, fit_curve
from eecontrol.core.curves.families import MODES
from eecontrol.core.curves.forecasters import (
    DEFAULT_FORECASTER,
    PredictiveDistribution,
    get_forecaster,
    prob_improves,
)
from eecontrol.core.curves.predictive import Calibration
from eecontrol.core.curves.result import (
    CURVE_POINTS,
    DECISION_EVERY,
    RuleResult,
    _curve_record,
    decide,
)


def _sets_best(y: np.ndarray, mode: str, min_delta: float) -> bool:
    """Whether the latest point set the curve's best: it beat the previous best by more
    than ``min_delta`` (an improvement as Lightning's ``EarlyStopping`` counts one; a first
    point does)."""
    if len(y) < 2:
        return True
    if mode == "max":
        return bool(y[-1] > y[:-1].max() + min_delta)
    return bool(y[-1] < y[:-1].min() - min_delta)


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
    check_rule_args(
        {"threshold": threshold, "band": band},
        min_delta=min_delta,
        none_ok=False,
        min_points=min_points,
        least_points=3,
    )
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
    target = best + (min_delta if mode == "max" else -min_delta)
    edge = None if fit.bounds is None else (fit.bounds[1] if mode == "max" else fit.bounds[0])
    if edge is not None and (best >= edge if mode == "max" else best <= edge):
        prob = 0.0  # the best already sits at the metric's bound: nothing left to gain
    else:
        if edge is not None and (target >= edge if mode == "max" else target <= edge):
            target = edge  # clipped: reaching the bound counts (paths are clipped onto it)
        prob = float(np.sum(w[paths.max(axis=1) >= float(fit.to_gain(target))]))
    curve_x = np.linspace(xa[-1], horizon, CURVE_POINTS + 1)[1:]
    pred = fit.predict(curve_x, quantiles=((1 - band) / 2, (1 + band) / 2))
    lo_c, hi_c = pred.band(band)
    curve = _curve_record(curve_x, pred.mean, lo_c, hi_c, band, "ensemble")
    lo, hi = curve["lower"][-1], curve["upper"][-1]
    common = {
        "rule": "in_run",
        "probability": prob,
        "predicted_final": float(pred.mean[-1]),
        "lower": lo,
        "upper": hi,
        "best": best,
        "n_points": n,
        "forecaster": "ensemble",
        "curve": curve,
    }
    return decide(
        common,
        threshold,
        "threshold",
        f"P(beating the best {best:.4g} by {min_delta:g} before {horizon:g})",
        "P(improvement)",
        f"predicted final {pred.mean[-1]:.4g} ({band:.0%} band {lo:.4g} .. {hi:.4g})",
        _new_best_reason(best, prob) if _sets_best(ya, mode, min_delta) else None,
    )


def _new_best_reason(best: float, prob: float) -> str:
    return (
        f"the latest validation set the run's best ({best:.4g}, beating the previous one by "
        f"more than min_delta): a run is never stopped at a new best; "
        f"P(improvement) = {prob:.3f}"
    )


# --- rules on the calibrated forecast -------------------------------------------------------

PLATEAU_F = 4.0
"""The convergence rule forecasts a tail whose trend beats a constant by less than this F
statistic as flat (see :func:`~eecontrol.core.curves.predictive.forecast`'s ``min_f``)."""


def _forecast_or_reason(
    rule: str,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    horizon: float,
    mode: str,
    min_points: int,
    bounds: Sequence[float] | None,
    forecaster: str,
    options: dict[str, Any],
) -> tuple[PredictiveDistribution | None, RuleResult | None, np.ndarray]:
    """The forecast on the rule's curve grid, or the ``no_decision`` that replaces it."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
    check_rule_args({}, min_points=min_points, least_points=1)
    fc_fn = get_forecaster(forecaster)
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(ya)
    if n < min_points:
        msg = f"warm-up: {n} of min_points={min_points} points"
        return None, RuleResult("no_decision", msg, rule, n_points=n), xa
    if not np.all(np.isfinite(ya)):
        msg = "the curve holds non-finite values"
        return None, RuleResult("no_decision", msg, rule, n_points=n), xa
    best = float(ya.max() if mode == "max" else ya.min())
    if n < fc_fn.min_points:
        msg = (
            f"blind: n < {fc_fn.min_points} (forecaster {forecaster!r} needs "
            f"{fc_fn.min_points} points, {n} seen)"
        )
        return None, RuleResult("no_decision", msg, rule, best=best, n_points=n), xa
    if not fc_fn.handles_constant and np.ptp(ya) <= 1e-12 * max(1.0, abs(best)):
        msg = "constant curve: no trend to extrapolate"
        return None, RuleResult("no_decision", msg, rule, best=best, n_points=n), xa
    if not horizon > xa[-1]:
        msg = f"no training left: the horizon {horizon} is not past the last position {xa[-1]}"
        return None, RuleResult("no_decision", msg, rule, best=best, n_points=n), xa
    grid = np.linspace(xa[-1], horizon, CURVE_POINTS + 1)[1:]
    try:
        fc = fc_fn(xa, ya, grid, mode=mode, bounds=bounds, **fc_fn.applicable(options))
    except ValueError as err:
        msg = f"no forecast: {err}"
        return None, RuleResult("no_decision", msg, rule, best=best, n_points=n), xa
    return fc, None, grid


def _forecast_evidence(
    rule: str,
    fc: PredictiveDistribution,
    grid: np.ndarray,
    band: float,
    forecaster: str,
    **fields: Any,
) -> dict[str, Any]:
    """The :class:`RuleResult` fields of a forecast rule but the decision and the reason:
    the mean and band at the horizon and the predicted curve from ``fc``, and ``fields``."""
    lo, hi = fc.band(band)
    curve = _curve_record(grid, fc.mean, lo, hi, band, forecaster)
    return {
        "rule": rule,
        "predicted_final": curve["mean"][-1],
        "lower": curve["lower"][-1],
        "upper": curve["upper"][-1],
        "forecaster": forecaster,
        "curve": curve,
        **fields,
    }


def _band_text(common: dict[str, Any]) -> str:
    """The predicted value at the horizon and its band, for a stop reason."""
    band = common["curve"]["band"]
    return (
        f"{common['predicted_final']:.4g} ({band:.0%} band "
        f"{common['lower']:.4g} .. {common['upper']:.4g})"
    )


def convergence_rule(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    horizon: float,
    mode: str = "max",
    min_delta: float | None = None,
    threshold: float | None = None,
    min_points: int = 5,
    band: float = 0.8,
    bounds: Sequence[float] | None = None,
    calibration: Calibration | None = None,
    forecaster: str = DEFAULT_FORECASTER,
    **options: Any,
) -> RuleResult:
    """Stops a run unlikely to beat its own best by ``min_delta`` before the horizon.

    The probability is the largest, over five positions between the last observation and
    the horizon, of P(value > best + ``min_delta``) under the forecaster's predictive
    distribution (default: the learned PFN, :mod:`eecontrol.core.curves.pfn`; with
    ``forecaster="forecast"`` the calibrated forecast, where a tail without a significant
    trend, F < :data:`PLATEAU_F`, is forecast flat). The target is clipped to ``bounds``
    (reaching the bound counts); a run is never stopped at a validation that set its best.
    With ``min_delta=None`` the improvement that counts is the curve's own noise (the larger of the robust noise
    estimate and the tail fit's residual spread), so a noisy plateau, whose best is a
    lucky draw, stops instead of waiting for a luckier one.

    Args:
        x: positions observed so far (strictly increasing, > 0).
        y: the monitored metric.
        horizon: the last position training will reach (same units as ``x``).
        mode: ``max`` or ``min``.
        min_delta: the improvement that counts, >= 0, or None (the curve's noise).
        threshold: stop when the probability is below this, in (0, 1); None: the
            forecaster's own (:class:`~eecontrol.core.curves.forecasters.RuleDefaults`:
            0.05 for ``forecast``, chosen leave-one-task-out for ``pfn``).
        min_points: no decision before this many points (the warm-up), >= 1 (below the
            forecaster's own minimum the rule says it is blind).
        band: central mass of the reported band at the horizon, in (0, 1).
        bounds: the metric's range ``(low, high)``, or None.
        calibration: the ``forecast`` forecaster's score table (default: the shipped one).
        forecaster: the name of the forecaster
            (:data:`~eecontrol.core.curves.forecasters.FORECASTERS`).
        **options: further options of the forecaster (those it does not take are left out).

    Returns:
        A :class:`RuleResult` of rule ``convergence``.
    """
    if threshold is None:
        threshold = get_forecaster(forecaster).rules.threshold
    check_rule_args({"threshold": threshold, "band": band}, min_delta=min_delta)
    opts = {"calibration": calibration, "min_f": PLATEAU_F, **options}
    fc, early, grid = _forecast_or_reason(
        "convergence", x, y, horizon, mode, min_points, bounds, forecaster, opts
    )
    if fc is None:
        assert early is not None
        return early
    ya = np.asarray(y, dtype=float)
    best = float(ya.max() if mode == "max" else ya.min())
    fit_sd = float(getattr(fc, "fit_sd", 0.0))
    delta = float(max(fc.noise, fit_sd)) if min_delta is None else float(min_delta)
    target = best + delta if mode == "max" else best - delta
    prob = float(
        np.max(prob_improves(fc, target, best, mode)[DECISION_EVERY - 1 :: DECISION_EVERY])
    )
    common = _forecast_evidence(
        "convergence",
        fc,
        grid,
        band,
        forecaster,
        probability=prob,
        best=best,
        n_points=len(ya),
        min_delta=delta,
    )
    return decide(
        common,
        threshold,
        "threshold",
        f"P(beating the best {best:.4g} by {delta:.3g} before {horizon:g})",
        "P(improvement)",
        f"predicted final {_band_text(common)}",
        _new_best_reason(best, prob) if _sets_best(ya, mode, delta) else None,
    )


def sweep_rule(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    horizon: float,
    best: float | None,
    mode: str = "max",
    delta: float | None = None,
    min_points: int = 5,
    band: float = 0.8,
    bounds: Sequence[float] | None = None,
    calibration: Calibration | None = None,
    forecaster: str = DEFAULT_FORECASTER,
    **options: Any,
) -> RuleResult:
    """Domhan et al.'s rule: stop when P(value at the horizon > the sweep's best) < ``delta``.

    ``best`` is the best value seen so far by any run of the sweep (Domhan et al. use
    ``delta = 0.05`` with their ensemble). A run whose own best already equals or beats it
    leads the sweep and is never stopped by this rule (the convergence rule decides when it is done).
    Mass of the forecast beyond the metric's bound counts as beating a ``best`` inside it.
    The arguments not listed here (``x``, ``y``, ``horizon``, ``mode``, ``min_points``,
    ``band``, ``bounds``, ``calibration``, ``forecaster``, ``**options``) are those of
    :func:`convergence_rule`.

    Args:
        best: the best value of the sweep so far (None: no other run yet, no decision).
        delta: stop below this probability, in (0, 1); None: the forecaster's own
            (:class:`~eecontrol.core.curves.forecasters.RuleDefaults`: 0.05 for
            ``forecast``, chosen leave-one-task-out for ``pfn``).

    Returns:
        A :class:`RuleResult` of rule ``sweep``.
    """
    if delta is None:
        delta = get_forecaster(forecaster).rules.delta
    check_rule_args({"delta": delta, "band": band})
    opts = {"calibration": calibration, **options}
    fc, early, grid = _forecast_or_reason(
        "sweep", x, y, horizon, mode, min_points, bounds, forecaster, opts
    )
    if fc is None:
        assert early is not None
        return early
    ya = np.asarray(y, dtype=float)
    n = len(ya)
    own = float(ya.max() if mode == "max" else ya.min())
    if best is None or not math.isfinite(best):
        return RuleResult("no_decision", "no best value in the sweep yet", "sweep", n_points=n)
    leads = own >= best if mode == "max" else own <= best
    prob = 1.0 if leads else float(fc.prob_beats(best)[-1])
    common = _forecast_evidence(
        "sweep", fc, grid, band, forecaster, probability=prob, best=float(best), n_points=n
    )
    return decide(
        common,
        delta,
        "delta",
        f"P(value at {horizon:g} beats the sweep's best {best:.4g})",
        "P(beating the sweep's best)",
        f"predicted {_band_text(common)}",
        f"this run holds the sweep's best ({own:.4g})" if leads else None,
    )
