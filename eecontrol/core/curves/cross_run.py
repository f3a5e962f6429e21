"""The cross-run predictor of Baker et al. (2017) and its stopping rule.

A nu-SVR (:class:`sklearn.svm.NuSVR`) trained on finished runs predicts a run's result from
the first ``tau`` values of its curve, their first and second differences and the run's
numeric hyperparameters; its error model is the cross-validated residual spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from eecontrol.core.checks import check_bounds, check_probability
from eecontrol.core.curves.families import MODES, TARGETS
from eecontrol.core.curves.predictive import noise_sd
from eecontrol.core.curves.result import RuleResult, decide


@dataclass(frozen=True)
class FinishedRun:
    """A run that trained to its end: its curve, hyperparameters and result.

    Args:
        values: the monitored metric at each validation (index-aligned across runs).
        hparams: numeric hyperparameters.
        result: the run's result (default: its best value in ``mode``).
    """

    values: Sequence[float]
    hparams: Mapping[str, float] = field(default_factory=dict)
    result: float | None = None

    def result_in(self, mode: str) -> float:
        """The run's result: ``result`` if given, else its best value."""
        if self.result is not None:
            return float(self.result)
        v = np.asarray(self.values, dtype=float)
        v = v[np.isfinite(v)]
        return float(v.max() if mode == "max" else v.min())


def curve_features(values: Sequence[float], tau: int) -> np.ndarray:
    """Baker et al.'s curve features: the first ``tau`` values, their first and second
    differences.

    Args:
        values: the curve (at least ``tau`` values).
        tau: how many leading values to use (>= 1).

    Returns:
        A vector of length ``3 * tau - 3`` (``tau`` values, ``tau - 1`` first and
        ``tau - 2`` second differences; none for ``tau < 3``).
    """
    v = np.asarray(values[:tau], dtype=float)
    d1 = np.diff(v)
    d2 = np.diff(v, n=2) if tau >= 3 else np.empty(0)
    return np.concatenate([v, d1, d2])


def _numeric(hparams: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in hparams.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


@dataclass(frozen=True)
class CrossRunPrediction:
    """A cross-run prediction of one run's result.

    Args:
        mean: predicted result (caller's units).
        sigma: the predictor's cross-validated error (RMSE of held-out predictions).
        n_train: finished runs the predictor was trained on.
        tau: curve points used.
        hparams: hyperparameter names used as features.
    """

    mean: float
    sigma: float
    n_train: int
    tau: int
    hparams: tuple[str, ...]

    def prob_beats(
        self, best: float, mode: str = "max", bounds: Sequence[float] | None = None
    ) -> float:
        """P(result better than ``best``) under a normal error with sd ``sigma``.

        With ``bounds`` (the metric's range), mass beyond the bound on the good side still
        counts as beating a ``best`` inside the range (a result there would be the bound
        itself, which beats ``best``); a ``best`` at the bound cannot be beaten.
        """
        s = 1.0 if mode == "max" else -1.0
        if bounds is not None:
            lo, hi = check_bounds(bounds)  # type: ignore[misc]
            if s * best >= (hi if mode == "max" else -lo):
                return 0.0
        if self.sigma <= 0:
            return 1.0 if s * self.mean > s * best else 0.0
        return float(norm.sf((s * best - s * self.mean) / self.sigma))


class CrossRunPredictor:
    """Predicts a run's result from the first ``tau`` points of its curve (Baker et al.).

    A nu-SVR (RBF kernel, standardised features) on :func:`curve_features` plus numeric
    hyperparameters (those spanning more than a factor 10 and all positive enter as
    log10). ``target="gain"`` (default) regresses the remaining gain ``result - y_tau``
    and adds it back, so a curve unlike any training curve is predicted as its own level
    plus a typical gain rather than as an average result (an RBF SVR reverts to its mean
    far from the data); ``target="value"`` regresses the result itself as in the paper.
    The error model is the RMSE of k-fold cross-validated predictions on the training runs.

    Args:
        tau: curve points used (>= 1).
        mode: ``max`` or ``min``.
        nu: NuSVR's nu in (0, 1].
        C: NuSVR's C > 0.
        target: ``gain`` or ``value``.
        cv: folds of the cross-validation (>= 2; at most the number of runs).
    """

    def __init__(
        self,
        tau: int,
        mode: str = "max",
        nu: float = 0.5,
        C: float = 1.0,
        target: str = "gain",
        cv: int = 5,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
        if target not in TARGETS:
            raise ValueError(f"`target` must be one of {list(TARGETS)}, got {target!r}.")
        if not (isinstance(tau, int) and tau >= 1):
            raise ValueError(f"`tau` must be an integer in [1, inf), got {tau!r}.")
        self.tau, self.mode, self.nu, self.C, self.target, self.cv = tau, mode, nu, C, target, cv
        self._model: Any = None
        self._keys: tuple[str, ...] = ()
        self._logs: tuple[bool, ...] = ()
        self._fallback: tuple[float, ...] = ()
        self.sigma: float = float("nan")
        self.n_train = 0

    def _model_factory(self) -> Any:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import NuSVR

        return make_pipeline(StandardScaler(), NuSVR(nu=self.nu, C=self.C, kernel="rbf"))

    def _features(self, values: Sequence[float], hparams: Mapping[str, Any]) -> np.ndarray:
        s = 1.0 if self.mode == "max" else -1.0
        hp = _numeric(hparams)
        h = []
        for k, log, fallback in zip(self._keys, self._logs, self._fallback):
            v = hp.get(k)
            if v is None or (log and v <= 0):
                h.append(fallback)  # missing, or no log: the training runs' median feature
            else:
                h.append(math.log10(v) if log else v)
        return np.concatenate([curve_features([s * v for v in values], self.tau), h])

    def fit(self, runs: Sequence[FinishedRun]) -> CrossRunPredictor:
        """Trains on finished runs with at least ``tau`` finite points.

        Raises:
            ValueError: with fewer than 2 usable runs.
        """
        usable = [
            r
            for r in runs
            if len(r.values) >= self.tau and np.all(np.isfinite(r.values[: self.tau]))
        ]
        if len(usable) < 2:
            raise ValueError(
                f"need at least 2 finished runs with {self.tau} points, got {len(usable)}."
            )
        hps = [_numeric(r.hparams) for r in usable]
        keys = sorted(set.intersection(*(set(h) for h in hps))) if hps else []
        self._keys = tuple(keys)
        self._logs = tuple(
            all(h[k] > 0 for h in hps) and max(h[k] for h in hps) > 10 * min(h[k] for h in hps)
            for k in keys
        )
        self._fallback = tuple(
            float(np.median([math.log10(h[k]) if log else h[k] for h in hps]))
            for k, log in zip(keys, self._logs)
        )
        s = 1.0 if self.mode == "max" else -1.0
        X = np.stack([self._features(r.values, r.hparams) for r in usable])
        base = (
            np.array([s * r.values[self.tau - 1] for r in usable]) if self.target == "gain" else 0.0
        )
        y = np.array([s * r.result_in(self.mode) for r in usable]) - base
        k = min(self.cv, len(usable))
        errors = []
        folds = np.arange(len(usable)) % k
        for f in range(k):
            train, test = folds != f, folds == f
            if train.sum() < 1:
                continue
            if np.ptp(y[train]) == 0:
                pred = np.full(test.sum(), y[train][0])
            else:
                model = self._model_factory().fit(X[train], y[train])
                pred = model.predict(X[test])
            errors.append(pred - y[test])
        err = np.concatenate(errors)
        # A floor on the error: the runs' own noise (a training set whose results all
        # agree, or a lucky cross-validation, must not give a zero-width band).
        floor = float(np.median([noise_sd(np.asarray(r.values, dtype=float)) for r in usable]))
        floor = max(floor, 1e-3 * float(np.max(np.abs(y)) if len(y) else 0.0), 1e-9)
        self.sigma = max(float(np.sqrt(np.mean(err**2))), floor)
        self._constant = float(y[0]) if np.ptp(y) == 0 else None
        self._model = None if self._constant is not None else self._model_factory().fit(X, y)
        self.n_train = len(usable)
        return self

    def predict(self, values: Sequence[float], hparams: Mapping[str, Any]) -> CrossRunPrediction:
        """Predicts the result of a run from its first ``tau`` values and hyperparameters."""
        if self.n_train == 0:
            raise ValueError("call fit() before predict().")
        s = 1.0 if self.mode == "max" else -1.0
        x = self._features(values, hparams)[None, :]
        g = self._constant if self._model is None else float(self._model.predict(x)[0])
        base = s * values[self.tau - 1] if self.target == "gain" else 0.0
        return CrossRunPrediction(s * (g + base), self.sigma, self.n_train, self.tau, self._keys)


def cross_run_rule(
    values: Sequence[float] | np.ndarray,
    finished: Sequence[FinishedRun],
    hparams: Mapping[str, Any] | None = None,
    mode: str = "max",
    delta: float = 0.05,
    min_points: int = 3,
    min_finished: int = 5,
    bounds: Sequence[float] | None = None,
    predictor: CrossRunPredictor | None = None,
    **predictor_kwargs: Any,
) -> RuleResult:
    """Baker et al.'s rule: stop when P(result > best finished result) < ``delta``.

    Args:
        values: the running curve so far, one value per validation.
        finished: runs that trained to their end (their curves are index-aligned).
        hparams: this run's numeric hyperparameters.
        mode: ``max`` or ``min``.
        delta: stop below this probability, in (0, 1).
        min_points: no decision before this many points, >= 1.
        min_finished: no decision before this many finished runs, >= 2.
        bounds: the metric's range ``(low, high)``, or None: a result cannot pass the bound,
            so a best finished result at the bound cannot be beaten (see
            :meth:`CrossRunPrediction.prob_beats`).
        predictor: a :class:`CrossRunPredictor` already fitted on ``finished`` with
            ``tau`` equal to the curve's length, to reuse (else one is fitted here).
        **predictor_kwargs: passed to :class:`CrossRunPredictor` (nu, C, target, cv).

    Returns:
        A :class:`RuleResult` of rule ``cross_run``.
    """
    check_probability("delta", delta)
    bnd = check_bounds(bounds)
    if min_points < 1:
        raise ValueError(f"`min_points` must be an integer in [1, inf), got {min_points!r}.")
    if min_finished < 2:
        raise ValueError(f"`min_finished` must be an integer in [2, inf), got {min_finished!r}.")
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < min_points:
        return RuleResult(
            "no_decision",
            f"warm-up: {n} of min_points={min_points} points",
            "cross_run",
            n_points=n,
        )
    if not np.all(np.isfinite(v)):
        return RuleResult(
            "no_decision", "the curve holds non-finite values", "cross_run", n_points=n
        )
    usable = [r for r in finished if len(r.values) >= n and np.all(np.isfinite(r.values[:n]))]
    if len(usable) < min_finished:
        return RuleResult(
            "no_decision",
            f"{len(usable)} finished run(s) with >= {n} points; min_finished={min_finished}",
            "cross_run",
            n_points=n,
        )
    best = (
        max(r.result_in(mode) for r in usable)
        if mode == "max"
        else min(r.result_in(mode) for r in usable)
    )
    if predictor is None or predictor.tau != n or predictor.n_train == 0:
        predictor = CrossRunPredictor(n, mode=mode, **predictor_kwargs).fit(usable)
    pred = predictor.predict(v, hparams or {})
    own = float(v.max() if mode == "max" else v.min())
    leads = own > best if mode == "max" else own < best
    # the run's result is its best value: one already past the best finished run wins
    prob = 1.0 if leads else pred.prob_beats(best, mode, bounds)
    z = float(norm.ppf(0.9))
    lo_b, hi_b = bnd if bnd is not None else (-math.inf, math.inf)
    mean = float(np.clip(pred.mean, lo_b, hi_b))
    lower = float(np.clip(pred.mean - z * pred.sigma, lo_b, hi_b))
    upper = float(np.clip(pred.mean + z * pred.sigma, lo_b, hi_b))
    if upper - lower <= 0:  # both ends clipped onto the bound: keep a band of one sigma
        lower, upper = (upper - pred.sigma, upper) if upper >= hi_b else (lower, lower + pred.sigma)
    common = {
        "rule": "cross_run",
        "probability": prob,
        "predicted_final": mean,
        "lower": lower,
        "upper": upper,
        "best": best,
        "n_points": n,
    }
    return decide(
        common,
        delta,
        "delta",
        f"P(result beats the best finished run {best:.4g})",
        "P(beating the best finished run)",
        f"predicted {pred.mean:.4g} +- {pred.sigma:.3g} from {pred.n_train} finished runs",
        f"its best {own:.4g} already beats the best finished run" if leads else None,
    )
