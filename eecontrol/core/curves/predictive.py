"""A calibrated predictive distribution of a curve's value at a later position.

The point forecast is the average of a few robust saturating families fitted to the *tail*
of the curve seen so far (its latest 65%), each by variable projection: the family is
linear in its level and amplitude, so for each value of its one shape parameter on a grid
the best level and amplitude are a 2x2 least-squares solve, and the best grid point wins.
The fit is global (no starting values, no local minima), deterministic and takes about a
millisecond. The families, on the tail's own scale (``u = x / x_tail[0]``,
``t = (x - x_tail[0]) / (x_last - x_tail[0])``, larger-is-better values):

* ``pow3``: ``c - a u^(-alpha)`` (Domhan et al.'s pow3);
* ``exp3``: ``c - a exp(-b t)``;
* ``loglin``: ``c + a log u``.

Fitting the tail rather than the whole curve matters on real curves: the first epochs of
a run (a plateau at chance before the take-off, a fast early rise) bend every family
towards a shape the rest of the curve does not follow. Each family's predicted gain past
the recent level is capped at ``max_gain`` ranges of the fitted tail. ``tail=0.65`` and
``max_gain=4`` were chosen on the four recorded tasks of ``benchmarks/data`` (a grid of
112 settings): caps 2-8 at tail 0.65 keep the worst task's gain over pow3 at 17-18%, while
tail 0.5 or 0.8 drop it to 10-12% (the choice is in-sample; only the score table is
measured held out by task).

The predictive distribution is ``Y = center + scale * S``: ``scale`` is the curve's noise
plus the gain still predicted plus the families' disagreement (all in the metric's units),
and the distribution of the score ``S`` is learned from recorded real curves (split
conformal prediction: the empirical quantiles of ``(y_final - center) / scale`` for curves
cut at a grid of fractions seen). The shipped :class:`Calibration` (``calibration.json``
beside this module) was learned on every recorded sweep in ``benchmarks/data`` by
``python benchmarks/curves_fit.py --write-calibration``; the benchmark measures it with
each task held out of its own calibration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eecontrol.core.checks import check_bounds
from eecontrol.core.curves.calibration import (  # noqa: F401 (re-exported)
    CALIBRATION_FILE,
    QUANTILE_LEVELS,
    Calibration,
    default_calibration,
)
from eecontrol.core.curves.families import MODES

TAIL_FAMILIES = ("pow3", "exp3", "loglin")

_ALPHAS = np.geomspace(0.02, 8.0, 48)  # pow3 shapes
_RATES = np.geomspace(0.05, 20.0, 48)  # exp3 shapes, per tail span


def _best_linear(basis: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``g ~ c + a * basis[k]`` for every row k, with ``a >= 0``.

    Args:
        basis: (K, n) candidate shapes (increasing in x).
        g: (n,) values.

    Returns:
        ``(params, rss)``: the level and amplitude of each row (K x 2) and its residual
        sum of squares (K,).
    """
    bm = basis.mean(axis=1, keepdims=True)
    gm = g.mean()
    bc = basis - bm
    gc = g - gm
    var = np.einsum("kn,kn->k", bc, bc)
    cov = bc @ gc
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(var > 1e-300, cov / var, 0.0)
    a = np.maximum(a, 0.0)
    c = gm - a * bm[:, 0]
    rss = np.sum((c[:, None] + a[:, None] * basis - g) ** 2, axis=1)
    return np.stack([c, a], axis=1), rss


def _tail_start(n: int, tail: float) -> int:
    """Index of the first tail point: the latest ``tail`` of ``n`` points, at least 4."""
    return min(max(0, math.floor(n * (1.0 - tail))), max(0, n - 4))


def tail_candidates(
    x: np.ndarray, g: np.ndarray, at: np.ndarray, tail: float = 0.65
) -> tuple[np.ndarray, float]:
    """Each tail family's forecast of a larger-is-better curve at positions ``at``.

    Args:
        x: strictly increasing positive positions.
        g: values, larger is better (a loss is passed negated).
        at: positions to forecast.
        tail: fraction of the points fitted (the latest ones; at least 4 points).

    Returns:
        ``(forecasts, rss_min)``: forecasts is (len(TAIL_FAMILIES), len(at)); rss_min the
        smallest residual sum of squares of the families on the tail.
    """
    n = len(g)
    k = _tail_start(n, tail)
    xs, gs = x[k:], g[k:]
    u, uq = xs / xs[0], at / xs[0]
    span = xs[-1] - xs[0]
    t, tq = (xs - xs[0]) / span, (at - xs[0]) / span
    out = []
    rss_all = []
    with np.errstate(over="ignore", under="ignore"):
        # pow3: c - a u^-alpha  ==  c + a * (-(u^-alpha))
        basis = -(u[None, :] ** -_ALPHAS[:, None])
        p, rss = _best_linear(basis, gs)
        i = int(np.argmin(rss))
        out.append(p[i, 0] - p[i, 1] * uq ** -_ALPHAS[i])
        rss_all.append(rss[i])
        # exp3: c - a exp(-b t)
        basis = -np.exp(-_RATES[:, None] * t[None, :])
        p, rss = _best_linear(basis, gs)
        i = int(np.argmin(rss))
        out.append(p[i, 0] - p[i, 1] * np.exp(-_RATES[i] * tq))
        rss_all.append(rss[i])
        # loglin: c + a log u
        p, rss = _best_linear(np.log(u)[None, :], gs)
        out.append(p[0, 0] + p[0, 1] * np.log(uq))
        rss_all.append(rss[0])
    return np.stack(out), float(min(rss_all))


def noise_sd(y: np.ndarray) -> float:
    """A robust estimate of the observation noise of a curve (its smooth trend removed).

    The median absolute second difference, scaled so that it estimates the standard
    deviation of independent Gaussian noise (``var(d2) = 6 sigma^2``); second differences
    leave out a locally linear trend.
    """
    if len(y) < 3:
        return 0.0
    d2 = np.diff(np.asarray(y, dtype=float), n=2)
    return float(1.4826 * np.median(np.abs(d2)) / math.sqrt(6.0))


class GainScaleDistribution:
    """The shared surface of predictive distributions held on the larger-is-better scale.

    A subclass (a frozen dataclass) has ``at``, ``mode`` and ``bounds`` and defines
    ``_gain_quantile(q)`` (the q-quantile on the gain scale, a loss negated) and ``mean``;
    it gets the caller's-unit :meth:`quantile` and :meth:`band` and the bound check of
    ``prob_beats``. :meth:`_band_anchors` are the points the band must contain (the mean),
    :meth:`_widen` a last adjustment of the band (none).
    """

    at: np.ndarray
    mode: str
    bounds: tuple[float, float] | None

    @property
    def _sign(self) -> float:
        return 1.0 if self.mode == "max" else -1.0

    def _to_value(self, g: np.ndarray) -> np.ndarray:
        v = self._sign * np.asarray(g, dtype=float)
        if self.bounds is not None:
            v = np.clip(v, *self.bounds)
        return v

    def _gain_quantile(self, q: float) -> np.ndarray:
        raise NotImplementedError

    @property
    def mean(self) -> np.ndarray:
        """The point forecast at each position (inside ``bounds``)."""
        raise NotImplementedError

    def _unbeatable(self, threshold: float) -> bool:
        """Whether ``threshold`` lies at or beyond the metric's bound (nothing beats it)."""
        if self.bounds is None:
            return False
        edge = self.bounds[1] if self.mode == "max" else self.bounds[0]
        return bool(self._sign * threshold >= self._sign * edge)

    def quantile(self, q: float) -> np.ndarray:
        """The q-quantile of the value (for ``min``, low quantiles are the good side)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"`q` must be a probability in [0, 1], got {q!r}.")
        return self._to_value(self._gain_quantile(q if self.mode == "max" else 1.0 - q))

    def _band_anchors(self) -> tuple[np.ndarray, ...]:
        return (self.mean,)

    def _widen(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return lo, hi

    def band(self, level: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
        """The central band holding ``level`` of the mass, ``(lower, upper)``.

        It contains the point forecasts (:meth:`_band_anchors`) and stays inside ``bounds``.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
        a = self.quantile((1.0 - level) / 2.0)
        b = self.quantile((1.0 + level) / 2.0)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        for m in self._band_anchors():
            lo, hi = np.minimum(lo, m), np.maximum(hi, m)
        return self._widen(lo, hi)


@dataclass(frozen=True)
class Forecast(GainScaleDistribution):
    """The calibrated predictive distribution of a curve's value at positions ``at``.

    Values are in the caller's units; ``Y = center + scale * S`` on the larger-is-better
    scale, ``S`` distributed as the calibration's scores at the fraction of the curve seen.

    Args:
        at: the positions.
        center: the tail families' average forecast (uncalibrated).
        scale: the forecast's scale (noise + predicted gain + disagreement), > 0.
        fraction: the fraction of the curve seen at each position (last x / position).
        scores: the score quantiles at each position (len(at) x len(levels)).
        levels: the quantile levels of ``scores``.
        mode: ``max`` or ``min``.
        bounds: the metric's range, or None.
        noise: the curve's noise estimate (caller's units).
        candidates: each tail family's forecast (families x positions).
        fit_sd: the residual standard deviation of the best tail family.
    """

    at: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    fraction: np.ndarray
    scores: np.ndarray
    levels: np.ndarray
    mode: str
    bounds: tuple[float, float] | None
    noise: float
    candidates: np.ndarray
    fit_sd: float = 0.0

    def _gain_quantile(self, q: float) -> np.ndarray:
        s = np.array([np.interp(q, self.levels, row) for row in self.scores])
        return self.center + self.scale * s

    @property
    def mean(self) -> np.ndarray:
        """The point forecast: the tail families' average (clipped to ``bounds``).

        The calibrated scores' median is not added back: learned on other tasks, it moved
        a loss task's forecasts the wrong way (``benchmarks/curves_fit.py``).
        """
        return self._to_value(self.center)

    def _widen(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The band is never of zero width: at least the curve's noise, or a small
        fraction of the scale (inside ``bounds``)."""
        width = np.maximum(np.maximum(self.noise, 0.05 * self.scale), 1e-9)
        short = (hi - lo) < width
        if np.any(short):
            room_lo = np.full_like(lo, np.inf) if self.bounds is None else lo - self.bounds[0]
            room_hi = np.full_like(hi, np.inf) if self.bounds is None else self.bounds[1] - hi
            need = np.where(short, width - (hi - lo), 0.0)
            up = np.minimum(need / 2.0 + np.maximum(need / 2.0 - room_lo, 0.0), room_hi)
            down = np.minimum(need - up, room_lo)
            lo, hi = lo - down, hi + up
        return lo, hi

    def prob_beats(self, threshold: float) -> np.ndarray:
        """P(the value is better than ``threshold``) at each position.

        Mass beyond the metric's bound counts as beating a ``threshold`` inside it (a
        value there would be the bound itself, still better); a threshold at or beyond
        the bound cannot be beaten.
        """
        if self._unbeatable(threshold):
            return np.zeros(len(self.at))
        z = (self._sign * threshold - self.center) / self.scale
        out = []
        for zi, row in zip(z, self.scores):
            if zi < row[0]:
                out.append(1.0)
            elif zi >= row[-1]:
                out.append(0.0)
            else:  # the inverse of the quantile function: P(S <= z)
                out.append(1.0 - float(np.interp(zi, row, self.levels)))
        return np.asarray(out)


def forecast_inputs(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    at: Sequence[float] | np.ndarray | float,
    mode: str,
    least_points: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A forecaster's curve and positions as float arrays, after the checks all share.

    Args:
        x: positions seen so far.
        y: the metric at those positions.
        at: positions to forecast (one, or a sequence).
        mode: ``max`` or ``min``.
        least_points: the fewest points the forecaster forecasts from.

    Returns:
        ``x`` and ``y`` (1-D, one length) and ``at`` (at least 1-D).

    Raises:
        ValueError: for a bad mode, ``x`` and ``y`` of different shapes, or too few points.
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    atv = np.atleast_1d(np.asarray(at, dtype=float))
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(f"`x` and `y` must be 1-D of one length, got {xa.shape}, {ya.shape}.")
    if len(ya) < least_points:
        points = "point" if least_points == 1 else "points"
        raise ValueError(f"need at least {least_points} {points} to forecast, got {len(ya)}.")
    return xa, ya, atv


def forecast(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    at: Sequence[float] | np.ndarray | float,
    mode: str = "max",
    bounds: Sequence[float] | None = None,
    calibration: Calibration | None = None,
    tail: float = 0.65,
    max_gain: float = 4.0,
    min_f: float = 0.0,
) -> Forecast:
    """Forecasts a curve's value at later positions with a calibrated distribution.

    Args:
        x: strictly increasing positive positions seen so far (at least 4).
        y: the metric at those positions, finite.
        at: positions to forecast (each >= ``x[-1]``).
        mode: ``max`` (larger is better) or ``min``.
        bounds: the metric's range ``(low, high)``, or None.
        calibration: the score distribution (default: :func:`default_calibration`).
        tail: the fraction of the latest points the families are fitted to, in (0, 1].
        max_gain: cap on each family's predicted gain beyond the recent level, in ranges
            of the fitted tail (a family running off to infinity is held back).
        min_f: a tail whose best family beats a constant by less than this F statistic
            is forecast as flat at its recent level (the mean of the last 3 points); 0
            (default) never. The convergence rule uses 4: a noisy plateau is not
            extrapolated upwards. (As a default it cost accuracy on real curves: a
            diverging-then-recovering loss looks like noise early on.)

    Returns:
        A :class:`Forecast`.

    Raises:
        ValueError: for fewer than 4 points, non-finite values, bad positions or mode.
    """
    xa, ya, atv = forecast_inputs(x, y, at, mode, least_points=4)
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("`x` and `y` must be finite.")
    if np.any(xa <= 0) or np.any(np.diff(xa) <= 0):
        raise ValueError("`x` must be positive and strictly increasing.")
    if not 0.0 < tail <= 1.0:
        raise ValueError(f"`tail` must be a number in (0.0, 1.0], got {tail!r}.")
    bnd = check_bounds(bounds)
    cal = calibration if calibration is not None else default_calibration()
    s = 1.0 if mode == "max" else -1.0
    g = s * ya
    n = len(g)
    cand, rss = tail_candidates(xa, g, atv, tail)
    k = _tail_start(n, tail)
    tail_range = float(np.ptp(g[k:]))
    recent = float(g[-3:].mean())
    cand = np.minimum(cand, recent + max_gain * tail_range)
    # A tail whose trend the noise explains as well (F test of the best family against a
    # constant, F < min_f) is a plateau: every family is replaced by the recent level, so
    # a noisy plateau is not extrapolated upwards by a family fitted to its noise.
    m = n - k
    tss = float(np.sum((g[k:] - g[k:].mean()) ** 2))
    f_stat = ((tss - rss) / 2.0) / max(rss / max(m - 3, 1), 1e-300)
    if min_f > 0 and m > 4 and f_stat < min_f:
        cand = np.full_like(cand, recent)
    center = cand.mean(axis=0)
    fit_sd = math.sqrt(rss / (n - k))
    floor = max(0.01 * float(np.ptp(g)), 1e-9 * max(1.0, abs(recent)))
    scale = fit_sd + np.abs(center - recent) + 0.25 * tail_range
    scale = np.maximum(scale, floor)
    fraction = np.clip(xa[-1] / np.maximum(atv, xa[-1]), 0.0, 1.0)
    return Forecast(
        at=atv,
        center=center,
        scale=scale,
        fraction=fraction,
        scores=cal.table(fraction),
        levels=np.asarray(cal.levels),
        mode=mode,
        bounds=bnd,
        noise=noise_sd(ya),
        candidates=s * cand,
        fit_sd=fit_sd,
    )


def calibration_scores(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    horizon_index: int,
    fractions: Sequence[float],
    mode: str = "max",
    tail: float = 0.65,
    max_gain: float = 4.0,
) -> list[float]:
    """The scores ``(y_final - center) / scale`` of one finished curve cut at each fraction.

    Args:
        x: the curve's positions (all of them).
        y: its values.
        horizon_index: the index of the final value (the horizon).
        fractions: fractions of the curve seen, in (0, 1).
        mode: ``max`` or ``min``.
        tail: as in :func:`forecast`.
        max_gain: as in :func:`forecast`.

    Returns:
        One score per fraction (NaN where the cut leaves fewer than 4 points).
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    s = 1.0 if mode == "max" else -1.0
    out = []
    identity = Calibration((0.0, 1.0), (0.0, 0.5, 1.0), ((-1.0, 0.0, 1.0),) * 2)
    for f in fractions:
        n = max(4, math.ceil(f * (horizon_index + 1)))
        if n > horizon_index:
            out.append(float("nan"))
            continue
        fc = forecast(xa[:n], ya[:n], xa[horizon_index], mode, None, identity, tail, max_gain)
        out.append(float((s * ya[horizon_index] - fc.center[0]) / fc.scale[0]))
    return out
