"""Learning-curve prediction: parametric extrapolation, a cross-run predictor, stopping rules.

Two predictors of where a training curve ends, and the two stopping rules built on them:

* **Parametric extrapolation** after Domhan, Springenberg and Hutter, "Speeding up
  Automatic Hyperparameter Optimization of Deep Neural Networks by Extrapolation of
  Learning Curves" (IJCAI 2015): the eleven saturating families of their paper are fitted
  by bounded least squares (:func:`scipy.optimize.least_squares`) and combined in an
  ensemble weighted by fit quality; a residual bootstrap gives a predictive distribution
  (mean and quantiles) at any position. Domhan et al. sample a Bayesian posterior by
  MCMC; this is the fast frequentist alternative, and its band is measured (tests,
  benchmark), not assumed.
* **Cross-run prediction** after Baker, Gupta, Raskar and Naik, "Accelerating Neural
  Architecture Search using Performance Prediction" (2017): a nu-SVR
  (:class:`sklearn.svm.NuSVR`) trained on finished runs predicts a run's result from the
  first ``tau`` values of its curve, their first and second differences and the run's
  numeric hyperparameters; its error model is the cross-validated residual spread.

The rules (:func:`in_run_rule`, :func:`cross_run_rule`) return a :class:`RuleResult`:
``stop``, ``continue`` or ``no_decision`` with a reason and the evidence. Degenerate
curves (empty, one point, constant, NaN, noise that no family explains) never raise:
they give ``no_decision`` and say why.

Conventions. ``x`` is any strictly increasing positive position (epoch, optimizer step,
validation index or training-set size); ``mode`` is ``"max"`` for a metric to maximise
(accuracy) and ``"min"`` for one to minimise (loss). Internally every curve is mapped to
a *gain* scale where larger is better and the observed part spans [1, 2]:
``u = x / x[0]`` and ``g = 1 + (s * y - min(s * y)) / range(s * y)`` with ``s = +1``
(max) or ``-1`` (min). The family bounds below are stated in that scale, which makes one
set of bounds fit any metric and any x unit. Results are mapped back to the caller's
units.

Ensemble weights (the rule used here): each family's fit gets the Bayesian information
criterion ``BIC = n log(RSS / n) + k log n`` on the gain scale, and weight
``exp(-(BIC - BIC_min) / 2)`` normalised over the families kept (a standard
approximation of Bayesian model averaging). A family is dropped before weighting when
its fit failed or it extrapolates implausibly (Domhan et al. "prefer increasing
curves"): at ten times the last observed position it falls by more than one observed
range, or rises by more than ``max_rise`` ranges. Keeping every family (the default)
rather than the best few matters: the disagreement between families is most of the
extrapolation uncertainty.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import norm

MODES = ("max", "min")
DECISIONS = ("stop", "continue", "no_decision")
TARGETS = ("gain", "value")

_BIG = 1e6  # residual given to a non-finite model value, so the optimiser backs away


# --- the families ---------------------------------------------------------------------


def _vapor_pressure(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return np.exp(a + b / x + c * np.log(x))


def _pow3(x: np.ndarray, c: float, a: float, alpha: float) -> np.ndarray:
    return c - a * x ** (-alpha)


def _log_log_linear(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return np.log(np.maximum(a * np.log(x) + b, 1e-300))


def _hill3(x: np.ndarray, ymax: float, eta: float, kappa: float) -> np.ndarray:
    return ymax / (1.0 + (kappa / x) ** eta)


def _log_power(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a / (1.0 + (x / math.exp(b)) ** c)


def _pow4(x: np.ndarray, c: float, a: float, b: float, alpha: float) -> np.ndarray:
    return c - (a * x + b) ** (-alpha)


def _mmf(x: np.ndarray, alpha: float, beta: float, kappa: float, delta: float) -> np.ndarray:
    return alpha - (alpha - beta) / (1.0 + (kappa * x) ** delta)


def _exp4(x: np.ndarray, c: float, a: float, b: float, alpha: float) -> np.ndarray:
    return c - np.exp(-a * x**alpha + b)


def _janoschek(x: np.ndarray, alpha: float, beta: float, kappa: float, delta: float) -> np.ndarray:
    return alpha - (alpha - beta) * np.exp(-kappa * x**delta)


def _weibull(x: np.ndarray, alpha: float, beta: float, kappa: float, delta: float) -> np.ndarray:
    return alpha - (alpha - beta) * np.exp(-((kappa * x) ** delta))


def _ilog2(x: np.ndarray, c: float, a: float) -> np.ndarray:
    return c - a / np.log(x + 1.0)


@dataclass(frozen=True)
class CurveFamily:
    """One parametric learning-curve family ``f(x; theta)`` with box bounds.

    Args:
        name: the family's name (Domhan et al. 2015).
        func: ``func(x, *theta)``, vectorised over ``x``.
        params: parameter names, in ``func``'s order.
        lower: lower bounds (gain scale, see the module docstring).
        upper: upper bounds.
        starts: initial guesses, each a full parameter vector; the best fit wins.
    """

    name: str
    func: Callable[..., np.ndarray]
    params: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    starts: tuple[tuple[float, ...], ...]

    def __call__(self, x: np.ndarray, theta: Sequence[float]) -> np.ndarray:
        """Evaluates the family at ``x`` (non-finite values where it overflows)."""
        with np.errstate(all="ignore"):
            return np.asarray(self.func(np.asarray(x, dtype=float), *theta), dtype=float)


_L = 50.0  # bound on asymptotes / levels in gain units (the observed range is 1)

FAMILIES: dict[str, CurveFamily] = {
    f.name: f
    for f in (
        CurveFamily(
            "vapor_pressure",
            _vapor_pressure,
            ("a", "b", "c"),
            (-10.0, -20.0, -5.0),
            (10.0, 20.0, 5.0),
            ((0.6, -0.6, 0.0), (0.5, -1.0, 0.05), (0.2, -0.2, 0.1)),
        ),
        CurveFamily(
            "pow3",
            _pow3,
            ("c", "a", "alpha"),
            (-_L, 0.0, 1e-3),
            (_L, 100.0, 10.0),
            ((2.2, 1.2, 0.5), (2.0, 1.0, 1.0), (3.0, 2.0, 0.2)),
        ),
        CurveFamily(
            "log_log_linear",
            _log_log_linear,
            ("a", "b"),
            (0.0, 1e-6),
            (100.0, 1e3),
            ((1.0, 2.7), (3.0, 2.7), (0.3, 2.7)),
        ),
        CurveFamily(
            "hill3",
            _hill3,
            ("ymax", "eta", "kappa"),
            (0.0, 1e-2, 1e-3),
            (_L, 10.0, 1e4),
            ((2.2, 1.0, 1.0), (2.0, 2.0, 3.0), (3.0, 0.5, 1.0)),
        ),
        CurveFamily(
            "log_power",
            _log_power,
            ("a", "b", "c"),
            (0.0, -10.0, -10.0),
            (_L, 20.0, 0.0),
            ((2.2, 0.0, -1.0), (2.0, 1.0, -2.0), (3.0, 0.0, -0.5)),
        ),
        CurveFamily(
            "pow4",
            _pow4,
            ("c", "a", "b", "alpha"),
            (-_L, 1e-6, 0.0, 1e-3),
            (_L, 100.0, 100.0, 10.0),
            ((2.2, 1.0, 0.5, 0.8), (2.0, 0.3, 1.0, 1.5), (3.0, 1.0, 0.1, 0.3)),
        ),
        CurveFamily(
            "mmf",
            _mmf,
            ("alpha", "beta", "kappa", "delta"),
            (-_L, -_L, 1e-4, 1e-2),
            (_L, _L, 100.0, 10.0),
            ((2.2, 0.5, 0.5, 1.0), (2.0, 0.0, 0.2, 1.5), (3.0, 1.0, 1.0, 0.5)),
        ),
        CurveFamily(
            "exp4",
            _exp4,
            ("c", "a", "b", "alpha"),
            (-_L, 1e-6, -20.0, 1e-2),
            (_L, 100.0, 20.0, 5.0),
            ((2.2, 0.3, 0.5, 1.0), (2.0, 1.0, 0.0, 0.5), (3.0, 0.1, 1.0, 0.8)),
        ),
        CurveFamily(
            "janoschek",
            _janoschek,
            ("alpha", "beta", "kappa", "delta"),
            (-_L, -_L, 1e-6, 1e-2),
            (_L, _L, 100.0, 5.0),
            ((2.2, 0.5, 0.3, 1.0), (2.0, 0.0, 0.1, 1.5), (3.0, 1.0, 0.5, 0.5)),
        ),
        CurveFamily(
            "weibull",
            _weibull,
            ("alpha", "beta", "kappa", "delta"),
            (-_L, -_L, 1e-6, 1e-2),
            (_L, _L, 100.0, 5.0),
            ((2.2, 0.5, 0.3, 1.0), (2.0, 0.0, 0.2, 1.5), (3.0, 1.0, 0.5, 0.5)),
        ),
        CurveFamily(
            "ilog2",
            _ilog2,
            ("c", "a"),
            (-_L, 0.0),
            (_L, 100.0),
            ((2.2, 1.0), (3.0, 2.0)),
        ),
    )
}
"""The families of Domhan et al. (2015). ``ilog2`` is ``c - a / log(x + 1)`` (the paper's
``log x`` is singular at the first epoch, x = 1). ``hill3`` is written
``ymax / (1 + (kappa / x)^eta)``, equal to the paper's form for x > 0."""


# --- fitting one family ---------------------------------------------------------------


@dataclass(frozen=True)
class FamilyFit:
    """A family fitted to one curve.

    Args:
        family: the family's name (a key of :data:`FAMILIES`).
        params: the fitted parameters.
        rss: residual sum of squares.
        n: number of points fitted.
        bic: Bayesian information criterion ``n log(RSS/n) + k log n``.
        weight: ensemble weight (0 until :func:`fit_curve` sets it).
    """

    family: str
    params: tuple[float, ...]
    rss: float
    n: int
    bic: float
    weight: float = 0.0


def _solve(
    fam: CurveFamily, x: np.ndarray, y: np.ndarray, start: Sequence[float], max_nfev: int
) -> tuple[np.ndarray, float] | None:
    lo, hi = np.asarray(fam.lower), np.asarray(fam.upper)
    p0 = np.clip(np.asarray(start, dtype=float), lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))

    def residuals(theta: np.ndarray) -> np.ndarray:
        r = fam(x, theta) - y
        r[~np.isfinite(r)] = _BIG
        return r

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = least_squares(
                residuals, p0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=max_nfev
            )
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    rss = float(np.sum(sol.fun**2))
    if not math.isfinite(rss) or rss >= _BIG:
        return None
    return sol.x, rss


def fit_family(
    family: str | CurveFamily,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    starts: Sequence[Sequence[float]] | None = None,
    max_nfev: int = 400,
) -> FamilyFit | None:
    """Fits one family to ``(x, y)`` by bounded least squares from one or more starts.

    ``x`` and ``y`` are used as given (no rescaling): :func:`fit_curve` calls this on the
    gain scale, where the family bounds apply.

    Args:
        family: a name in :data:`FAMILIES` or a :class:`CurveFamily`.
        x: positions, > 0.
        y: values.
        starts: initial parameter vectors (default: the family's own).
        max_nfev: evaluation budget per start.

    Returns:
        The best fit over the starts tried, or None when every start failed or the family has
        at least as many parameters as there are points.
    """
    fam = FAMILIES[family] if isinstance(family, str) else family
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n, k = len(xa), len(fam.params)
    if n <= k:
        return None
    # Rank the starts by their initial error; solve from the best, and from the others
    # only when that fails or leaves more than 1% of the variance unexplained.
    candidates = list(starts if starts is not None else fam.starts)
    with np.errstate(all="ignore"):
        cost = [float(np.nansum((fam(xa, st) - ya) ** 2)) for st in candidates]
    ranked = [candidates[i] for i in np.argsort([c if math.isfinite(c) else np.inf for c in cost])]
    tss = float(np.sum((ya - ya.mean()) ** 2))
    best: tuple[np.ndarray, float] | None = None
    for start in ranked:
        sol = _solve(fam, xa, ya, start, max_nfev)
        if sol is not None and (best is None or sol[1] < best[1]):
            best = sol
        if best is not None and best[1] <= 0.01 * tss:
            break
    if best is None:
        return None
    theta, rss = best
    bic = n * math.log(max(rss / n, 1e-300)) + k * math.log(n)
    return FamilyFit(fam.name, tuple(float(t) for t in theta), rss, n, bic)


# --- the ensemble and its predictive distribution ---------------------------------------


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` of weighted samples along axis 0 (``values``: samples x points)."""
    order = np.argsort(values, axis=0)
    v = np.take_along_axis(values, order, axis=0)
    w = weights[order]
    cdf = np.cumsum(w, axis=0) - 0.5 * w
    cdf /= cdf[-1:] + 0.5 * w[-1:]
    out = np.empty(values.shape[1])
    for j in range(values.shape[1]):
        out[j] = np.interp(q, cdf[:, j], v[:, j])
    return out


@dataclass(frozen=True)
class CurvePrediction:
    """The predictive distribution of a curve at positions ``x``, in the caller's units.

    Args:
        x: the positions.
        mean: the ensemble mean curve (no observation noise).
        quantiles: ``{q: values}`` of the predictive distribution of an observed value
            (parameter uncertainty and observation noise).
    """

    x: np.ndarray
    mean: np.ndarray
    quantiles: dict[float, np.ndarray]

    def band(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Returns the central band ``(lower, upper)`` holding ``level`` of the mass."""
        out = []
        for q in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
            key = next((k for k in self.quantiles if math.isclose(k, q, abs_tol=1e-9)), None)
            if key is None:
                raise ValueError(
                    f"`level` {level} needs quantile {q:.6g}; have {sorted(self.quantiles)}."
                )
            out.append(self.quantiles[key])
        return out[0], out[1]


@dataclass(frozen=True)
class CurveFit:
    """An ensemble of families fitted to one curve, or the reason there is none.

    Use :meth:`predict` for the mean and quantiles at any position and
    :meth:`sample_paths` for whole predicted trajectories.

    Args:
        ok: whether a prediction is available.
        reason: why not (or a one-line summary when ``ok``).
        mode: ``max`` or ``min``.
        n: number of (finite) points used.
        fits: the families kept, with their weights (sum 1), heaviest first.
        r2: fraction of the curve's variance explained by the heaviest family.
        x0: the scale of x (first position).
        y_lo: gain-scale offset (``min(s * y)``).
        y_range: gain-scale range (``range(s * y)``).
        draws: per kept family, bootstrap parameter vectors (B x k arrays).
        residuals: per kept family, centred, rescaled residuals (gain scale).
        seed: seed of the noise draws in :meth:`sample_paths`.
        bounds: the metric's range ``(low, high)`` in the caller's units (accuracy:
            ``(0, 1)``); predicted paths, means and quantiles are clipped to it.
    """

    ok: bool
    reason: str
    mode: str = "max"
    n: int = 0
    fits: tuple[FamilyFit, ...] = ()
    r2: float = float("nan")
    x0: float = 1.0
    y_lo: float = 0.0
    y_range: float = 1.0
    draws: tuple[np.ndarray, ...] = field(default=(), repr=False)
    residuals: tuple[np.ndarray, ...] = field(default=(), repr=False)
    seed: int = 0
    bounds: tuple[float, float] | None = None

    def _gain_bounds(self) -> tuple[float, float]:
        """``bounds`` on the gain scale (``(-inf, inf)`` without bounds)."""
        if self.bounds is None:
            return -math.inf, math.inf
        a, b = (float(v) for v in self.to_gain(np.asarray(self.bounds, dtype=float)))
        return min(a, b), max(a, b)

    @property
    def sign(self) -> float:
        """+1 for ``max``, -1 for ``min``."""
        return 1.0 if self.mode == "max" else -1.0

    def to_gain(self, y: np.ndarray | float) -> np.ndarray:
        """Maps values in the caller's units to the gain scale."""
        return 1.0 + (self.sign * np.asarray(y, dtype=float) - self.y_lo) / self.y_range

    def from_gain(self, g: np.ndarray | float) -> np.ndarray:
        """Maps gain-scale values back to the caller's units."""
        return self.sign * (self.y_lo + (np.asarray(g, dtype=float) - 1.0) * self.y_range)

    def sample_paths(
        self, x: Sequence[float] | np.ndarray, noise: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draws predicted trajectories on the gain scale.

        Args:
            x: positions (caller's units).
            noise: add one resampled residual per sample and position.

        Returns:
            ``(paths, weights)``: paths is (samples x positions) on the gain scale; weights
            (samples,) sum to 1.
        """
        if not self.ok:
            raise ValueError(f"no prediction: {self.reason}")
        u = np.asarray(x, dtype=float) / self.x0
        rng = np.random.default_rng(self.seed)
        paths, weights = [], []
        for fit, draws, res in zip(self.fits, self.draws, self.residuals):
            fam = FAMILIES[fit.family]
            vals = np.stack([fam(u, theta) for theta in draws])
            if noise:
                vals = vals + rng.choice(res, size=vals.shape)
            paths.append(vals)
            weights.append(np.full(len(draws), fit.weight / len(draws)))
        all_paths = np.concatenate(paths)
        all_w = np.concatenate(weights)
        bad = ~np.all(np.isfinite(all_paths), axis=1)
        if bad.any():
            all_paths, all_w = all_paths[~bad], all_w[~bad]
        if self.bounds is not None:
            all_paths = np.clip(all_paths, *self._gain_bounds())
        return all_paths, all_w / all_w.sum()

    def predict(
        self,
        x: Sequence[float] | np.ndarray | float,
        quantiles: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95),
    ) -> CurvePrediction:
        """The ensemble's mean and predictive quantiles at ``x`` (caller's units).

        Args:
            x: one position or several.
            quantiles: levels in (0, 1).

        Returns:
            A :class:`CurvePrediction`; for ``mode="min"`` quantile q is still the
            q-quantile of the value (low quantiles are the good side).
        """
        xa = np.atleast_1d(np.asarray(x, dtype=float))
        u = xa / self.x0
        mean_g = np.zeros_like(u)
        for fit in self.fits:
            mean_g += fit.weight * FAMILIES[fit.family](u, fit.params)
        mean_g = np.clip(mean_g, *self._gain_bounds())
        paths, w = self.sample_paths(xa, noise=True)
        qs: dict[float, np.ndarray] = {}
        for q in quantiles:
            # a low quantile of the value is a high quantile of the gain when minimising
            qg = _weighted_quantile(paths, w, q if self.mode == "max" else 1.0 - q)
            qs[float(q)] = self.from_gain(qg)
        return CurvePrediction(xa, self.from_gain(mean_g), qs)


def check_bounds(bounds: Sequence[float] | None) -> tuple[float, float] | None:
    """Validates a metric range ``(low, high)``; returns it as floats (or None).

    Raises:
        ValueError: unless ``bounds`` is None or two numbers with ``low < high``.
    """
    if bounds is None:
        return None
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"`bounds` must be [low, high] with low < high, got {bounds!r}.") from None
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ValueError(f"`bounds` must be [low, high] with low < high, got {bounds!r}.")
    return lo, hi


def _check_curve_args(x: np.ndarray, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
    if x.ndim != 1:
        raise ValueError(f"`x` must be one-dimensional, got shape {x.shape}.")
    if len(x) and (not np.all(np.isfinite(x)) or np.any(x <= 0)):
        raise ValueError("`x` must be finite and in (0, inf).")
    if len(x) > 1 and np.any(np.diff(x) <= 0):
        raise ValueError("`x` must be strictly increasing.")


def _linear_draws(
    fam: CurveFamily, u: np.ndarray, theta: np.ndarray, r_star: np.ndarray
) -> np.ndarray:
    """Residual-bootstrap parameter draws by one Gauss-Newton step from the fit.

    Each bootstrap curve ``fitted + r`` is refitted by the linearised least-squares step
    ``theta + pinv(J) r`` (J: the Jacobian at the fit, by central differences), then clipped
    to the bounds: the bootstrap of the linearised model, at the cost of one SVD.
    """
    lo, hi = np.asarray(fam.lower), np.asarray(fam.upper)
    cols = []
    for j in range(len(theta)):
        h = 1e-6 * max(abs(theta[j]), 1e-3)
        tp, tm = theta.copy(), theta.copy()
        tp[j] = min(theta[j] + h, hi[j])
        tm[j] = max(theta[j] - h, lo[j])
        cols.append((fam(u, tp) - fam(u, tm)) / (tp[j] - tm[j]))
    jac = np.stack(cols, axis=1)
    if not np.all(np.isfinite(jac)):
        return np.tile(theta, (len(r_star), 1))
    step = np.linalg.pinv(jac, rcond=1e-10) @ r_star.T
    return np.clip(theta[:, None] + step, lo[:, None], hi[:, None]).T


def fit_curve(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    mode: str = "max",
    families: Sequence[str] | None = None,
    n_bootstrap: int = 100,
    max_families: int = 11,
    max_rise: float = 10.0,
    bootstrap: str = "linear",
    seed: int = 0,
    bounds: Sequence[float] | None = None,
) -> CurveFit:
    """Fits the ensemble of curve families to one observed curve.

    Args:
        x: strictly increasing positive positions.
        y: the metric at those positions.
        mode: ``max`` (larger is better) or ``min``.
        families: names from :data:`FAMILIES` (default: all).
        n_bootstrap: residual-bootstrap draws per kept family (>= 1).
        max_families: how many of the heaviest families are kept (>= 1).
        max_rise: drop a family whose value at ten times the last position exceeds the
            last fitted value by more than this many observed ranges.
        bootstrap: ``linear`` (default: each resampled curve is refitted by one
            Gauss-Newton step from the fit, see :func:`_linear_draws`) or ``refit`` (a
            bounded least-squares refit per draw; slower, and in our simulations its band
            under-covers: 0.67 instead of 0.80 against 0.79-0.83 for ``linear``).
        seed: seed of the bootstrap and the noise draws.
        bounds: the metric's range ``(low, high)`` (e.g. ``(0, 1)`` for accuracy), or
            None; the predictions are clipped to it, so a band never leaves the range
            the metric can take.

    Returns:
        A :class:`CurveFit`; ``ok=False`` with a reason for a degenerate curve.

    Raises:
        ValueError: for invalid arguments (mode, non-increasing or non-positive x,
            unknown family, mismatched lengths).
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    _check_curve_args(xa, mode)
    if xa.shape != ya.shape:
        raise ValueError(f"`x` and `y` must have the same length, got {len(xa)} and {len(ya)}.")
    names = list(families) if families is not None else list(FAMILIES)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"`families` must be a non-empty subset of {list(FAMILIES)}, got {names}.")
    if bootstrap not in ("linear", "refit"):
        raise ValueError(f"`bootstrap` must be one of ['linear', 'refit'], got {bootstrap!r}.")
    if n_bootstrap < 1 or max_families < 1:
        raise ValueError("`n_bootstrap` and `max_families` must be integers in [1, inf).")
    bnd = check_bounds(bounds)
    finite = len(ya) > 0 and bool(np.all(np.isfinite(ya)))
    if bnd is not None and finite and (ya.min() < bnd[0] or ya.max() > bnd[1]):
        raise ValueError(
            f"the curve's values [{ya.min():.6g}, {ya.max():.6g}] leave "
            f"`bounds` {list(bnd)}: the metric cannot take them."
        )
    if len(ya) and not np.all(np.isfinite(ya)):
        bad = [float(v) for v in ya[~np.isfinite(ya)]]
        return CurveFit(False, f"the curve holds non-finite values {bad[:3]}", mode, len(ya))
    if len(ya) < 3:
        return CurveFit(False, f"{len(ya)} point(s): at least 3 are needed to fit", mode, len(ya))
    s = 1.0 if mode == "max" else -1.0
    v = s * ya
    y_lo, y_range = float(v.min()), float(v.max() - v.min())
    if y_range <= 1e-12 * max(1.0, abs(y_lo)):
        return CurveFit(False, "constant curve: no trend to extrapolate", mode, len(ya))
    u = xa / xa[0]
    g = 1.0 + (v - y_lo) / y_range
    fits: list[FamilyFit] = []
    u_far = np.array([u[-1], 10.0 * u[-1]])
    for name in names:
        fit = fit_family(name, u, g)
        if fit is None:
            continue
        last, far = FAMILIES[name](u_far, fit.params)
        if not (math.isfinite(last) and math.isfinite(far)) or far < last - 1.0:
            continue
        if far > last + max_rise:
            continue
        fits.append(fit)
    if not fits:
        return CurveFit(False, "no curve family could be fitted", mode, len(ya))
    bics = np.array([f.bic for f in fits])
    w = np.exp(-(bics - bics.min()) / 2.0)
    order = np.argsort(-w)[:max_families]
    w_kept = w[order] / w[order].sum()
    kept = [replace(fits[i], weight=float(wi)) for i, wi in zip(order, w_kept)]
    tss = float(np.sum((g - g.mean()) ** 2))
    r2 = 1.0 - kept[0].rss / tss if tss > 0 else float("nan")
    rng = np.random.default_rng(seed)
    draws, residuals = [], []
    for fit in kept:
        fam = FAMILIES[fit.family]
        fitted = fam(u, fit.params)
        k = len(fit.params)
        res = g - fitted
        res = (res - res.mean()) * math.sqrt(len(g) / max(len(g) - k, 1))
        r_star = rng.choice(res, size=(n_bootstrap, len(g)))
        if bootstrap == "refit":
            thetas = []
            for r in r_star:
                sol = _solve(fam, u, fitted + r, fit.params, max_nfev=100)
                thetas.append(sol[0] if sol is not None else np.asarray(fit.params))
            draws.append(np.stack(thetas))
        else:
            draws.append(_linear_draws(fam, u, np.asarray(fit.params), r_star))
        residuals.append(res)
    reason = f"{len(kept)} famil{'y' if len(kept) == 1 else 'ies'}, top {kept[0].family}"
    return CurveFit(
        True,
        reason,
        mode,
        len(ya),
        tuple(kept),
        float(r2),
        float(xa[0]),
        y_lo,
        y_range,
        tuple(draws),
        tuple(residuals),
        seed,
        bnd,
    )


# --- the rules ------------------------------------------------------------------------


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


def check_probability(name: str, value: float) -> None:
    """Raises a ``ValueError`` naming ``name`` unless ``value`` is a number in (0, 1)."""
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not (ok and math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"`{name}` must be a number in (0.0, 1.0), got {value!r}.")


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


# --- the cross-run predictor (Baker et al. 2017) -------------------------------------------


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

        With ``bounds`` (the metric's range), the mass beyond the bound on the good side
        cannot be reached (a result there would be the bound itself), so it does not count
        as beating ``best``: ``P(best < R < high)`` when maximising. A ``best`` at the
        bound cannot be beaten.
        """
        s = 1.0 if mode == "max" else -1.0
        edge = math.inf
        if bounds is not None:
            lo, hi = check_bounds(bounds)  # type: ignore[misc]
            edge = hi if mode == "max" else -lo
        if s * best >= edge:
            return 0.0
        if self.sigma <= 0:
            return 1.0 if edge > s * self.mean > s * best else 0.0
        z_best = (s * best - s * self.mean) / self.sigma
        z_edge = (edge - s * self.mean) / self.sigma
        return float(max(norm.sf(z_best) - norm.sf(z_edge), 0.0))


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
        h = [math.log10(hp[k]) if log else hp.get(k, 0.0) for k, log in zip(self._keys, self._logs)]
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
        self.sigma = float(np.sqrt(np.mean(err**2)))
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
        **predictor_kwargs: passed to :class:`CrossRunPredictor` (nu, C, target, cv).

    Returns:
        A :class:`RuleResult` of rule ``cross_run``.
    """
    check_probability("delta", delta)
    check_bounds(bounds)
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
    pred = CrossRunPredictor(n, mode=mode, **predictor_kwargs).fit(usable).predict(v, hparams or {})
    prob = pred.prob_beats(best, mode, bounds)
    z = float(norm.ppf(0.9))
    common = {
        "rule": "cross_run",
        "probability": prob,
        "predicted_final": pred.mean,
        "lower": pred.mean - z * pred.sigma,
        "upper": pred.mean + z * pred.sigma,
        "best": best,
        "n_points": n,
    }
    if prob < delta:
        reason = (
            f"P(result beats the best finished run {best:.4g}) = {prob:.3f} < delta {delta:g}; "
            f"predicted {pred.mean:.4g} +- {pred.sigma:.3g} from {pred.n_train} finished runs"
        )
        return RuleResult("stop", reason, **common)
    return RuleResult(
        "continue", f"P(beating the best finished run) = {prob:.3f} >= {delta:g}", **common
    )
