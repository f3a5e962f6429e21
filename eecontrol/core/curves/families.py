"""The parametric learning-curve families of Domhan et al. (2015) and one-family fits.

The eleven saturating families are fitted by bounded least squares
(:func:`scipy.optimize.least_squares`) on the gain scale described in
:mod:`eecontrol.core.curves` (``u = x / x[0]``, observed values mapped to [1, 2] with
larger-is-better), where one set of parameter bounds fits any metric and any x unit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

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
