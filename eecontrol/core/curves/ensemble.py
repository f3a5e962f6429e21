"""The Domhan-style ensemble: every family fitted, BIC-weighted, with a residual bootstrap.

Each family's fit gets the Bayesian information criterion ``BIC = n log(RSS / n) + k log n``
on the gain scale and weight ``exp(-(BIC - BIC_min) / 2)`` normalised over the families
kept. A family is dropped before weighting when its fit failed or it extrapolates
implausibly (at ten times the last observed position it falls by more than one observed
range, or rises by more than ``max_rise`` ranges). A residual bootstrap gives each family's
spread; every family's draws are centred on the family's own fit, so the band never
contradicts it.

On real recorded curves this ensemble is less accurate than the calibrated tail ensemble
of :mod:`eecontrol.core.curves.predictive` (measured in ``benchmarks/curves_fit.py``); it
is kept for its predicted trajectories and as a reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from eecontrol.core.checks import check_bounds
from eecontrol.core.curves.families import (
    FAMILIES,
    MODES,
    CurveFamily,
    FamilyFit,
    _solve,
    fit_family,
)


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
            # Centre the draws on the family's own fit: the bootstrap gives the spread,
            # not the location (a linearised step can throw the draws far from a curved
            # fit: exp4 predicting 0.93 with draws of median -9.7 stopped a rising run).
            with np.errstate(all="ignore"):
                vals = vals - (np.nanmedian(vals, axis=0) - fam(u, fit.params))
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
