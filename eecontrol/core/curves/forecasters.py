"""The forecasters the stopping rules can decide with, by name.

Every forecaster is a function ``f(x, y, at, mode="max", bounds=None, **options)`` that
returns a :class:`PredictiveDistribution` of the curve's value at the positions ``at``.
The rules (:func:`~eecontrol.core.curves.rules.convergence_rule`,
:func:`~eecontrol.core.curves.rules.sweep_rule`), ``LearningCurveStopping``,
``LearningCurvePruner``, ``PredictiveHalvingPruner`` and ``eecontrol replay`` take the
name as ``forecaster=``:

* ``forecast``: the calibrated average of robust tail fits
  (:func:`~eecontrol.core.curves.predictive.forecast`); needs 4 points;
* ``ensemble``: the 11-family BIC ensemble with a residual bootstrap of Domhan et al.
  (:func:`~eecontrol.core.curves.ensemble.fit_curve`) as a distribution
  (:class:`EnsembleForecast`); needs 3 points;
* ``pfn`` (default): the learned prior-data fitted network (``eecontrol.core.curves.pfn``,
  issue 24), imported when first used; forecasts from one point.

Each forecaster carries the rules' default stop probabilities for its own predictive
distribution (:class:`RuleDefaults`); a rule given an explicit value uses that.

The distribution that decides is the one reported: the rules return the forecast they
decided with (its mean, band and curve), and the callback logs and writes exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from eecontrol.core.curves.ensemble import CurveFit, _weighted_quantile, fit_curve
from eecontrol.core.curves.families import FAMILIES
from eecontrol.core.curves.predictive import forecast, noise_sd


@runtime_checkable
class PredictiveDistribution(Protocol):
    """The predictive distribution of a curve's value at positions ``at``.

    Values are in the caller's units; for ``mode="min"`` low quantiles are the good side.

    Attributes:
        at: the positions (1-D).
        mode: ``max`` or ``min``.
        bounds: the metric's range ``(low, high)``, or None.
        noise: the observed curve's noise estimate (caller's units, >= 0).
    """

    at: np.ndarray
    mode: str
    bounds: tuple[float, float] | None
    noise: float

    @property
    def mean(self) -> np.ndarray:
        """The point forecast at each position (inside ``bounds``)."""
        ...

    def quantile(self, q: float) -> np.ndarray:
        """The q-quantile of the value at each position."""
        ...

    def band(self, level: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
        """The central band holding ``level`` of the mass, ``(lower, upper)``, containing
        :attr:`mean`."""
        ...

    def prob_beats(self, threshold: float) -> np.ndarray:
        """P(the value is strictly better than ``threshold``) at each position; a value
        beyond the bound is the bound, so a threshold at or beyond it cannot be beaten."""
        ...


ForecastFunction = Callable[..., PredictiveDistribution]
"""A forecast function, ``f(x, y, at, mode="max", bounds=None, **options)`` (the module's
contract; :meth:`Forecaster.__call__` spells out its types). Each function names its own
options, so no one signature with ``**options`` types them all."""


# --- the ensemble as a predictive distribution --------------------------------------------


@dataclass(frozen=True)
class EnsembleForecast:
    """The BIC ensemble's bootstrap paths at ``at`` as a :class:`PredictiveDistribution`.

    Args:
        at: the positions.
        mode: ``max`` or ``min``.
        bounds: the metric's range, or None.
        noise: the curve's robust noise estimate.
        fit: the ensemble fit.
        paths: predicted values (samples x positions) on the fit's gain scale, with noise.
        weights: the samples' weights (sum 1).
        fit_sd: the heaviest family's residual standard deviation (caller's units).
    """

    at: np.ndarray
    mode: str
    bounds: tuple[float, float] | None
    noise: float
    fit: CurveFit = field(repr=False)
    paths: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    fit_sd: float = 0.0

    @property
    def mean(self) -> np.ndarray:
        """The ensemble's mean curve (no observation noise), inside ``bounds``."""
        u = self.at / self.fit.x0
        g = sum(f.weight * FAMILIES[f.family](u, f.params) for f in self.fit.fits)
        return self.fit.from_gain(np.clip(g, *self.fit._gain_bounds()))

    def quantile(self, q: float) -> np.ndarray:
        """The q-quantile of an observed value (bootstrap paths with resampled noise)."""
        g = _weighted_quantile(self.paths, self.weights, q if self.mode == "max" else 1.0 - q)
        return self.fit.from_gain(g)

    def band(self, level: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
        """The central band holding ``level`` of the paths, widened to contain the mean."""
        a, b = self.quantile((1.0 - level) / 2.0), self.quantile((1.0 + level) / 2.0)
        m = self.mean
        return np.minimum(np.minimum(a, b), m), np.maximum(np.maximum(a, b), m)

    def prob_beats(self, threshold: float) -> np.ndarray:
        """The weighted fraction of paths strictly better than ``threshold``."""
        if self.bounds is not None:
            edge = self.bounds[1] if self.mode == "max" else self.bounds[0]
            if (threshold >= edge) if self.mode == "max" else (threshold <= edge):
                return np.zeros(len(self.at))
        g = float(self.fit.to_gain(threshold))
        return np.asarray(self.weights @ (self.paths > g), dtype=float)


def ensemble_forecast(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    at: Sequence[float] | np.ndarray | float,
    mode: str = "max",
    bounds: Sequence[float] | None = None,
    n_bootstrap: int = 100,
    seed: int = 0,
    families: Sequence[str] | None = None,
) -> EnsembleForecast:
    """The 11-family BIC ensemble's predictive distribution at ``at``.

    Args:
        x: strictly increasing positive positions (at least 3).
        y: the metric at those positions.
        at: positions to forecast.
        mode: ``max`` or ``min``.
        bounds: the metric's range, or None.
        n_bootstrap: bootstrap draws per family.
        seed: seed of the bootstrap and the noise draws.
        families: the families (default: all eleven).

    Returns:
        An :class:`EnsembleForecast`.

    Raises:
        ValueError: for bad arguments, or a curve no family fits (with the reason).
    """
    fit = fit_curve(
        x, y, mode, families=families, n_bootstrap=n_bootstrap, seed=seed, bounds=bounds
    )
    if not fit.ok:
        raise ValueError(f"the ensemble has no forecast: {fit.reason}")
    atv = np.atleast_1d(np.asarray(at, dtype=float))
    paths, w = fit.sample_paths(atv, noise=True)
    res = fit.residuals[0]
    return EnsembleForecast(
        at=atv,
        mode=mode,
        bounds=fit.bounds,
        noise=noise_sd(np.asarray(y, dtype=float)),
        fit=fit,
        paths=paths,
        weights=w,
        fit_sd=float(np.sqrt(np.mean(res**2)) * fit.y_range),
    )


# --- the registry ---------------------------------------------------------------------------


def _load_forecast() -> ForecastFunction:
    return forecast


def _load_ensemble() -> ForecastFunction:
    return ensemble_forecast


def _load_pfn() -> ForecastFunction:
    try:
        from eecontrol.core.curves.pfn import forecast as pfn_forecast
    except ImportError as err:
        raise ImportError(
            "forecaster 'pfn' needs eecontrol.core.curves.pfn (the learned forecaster of "
            f"issue 24), which cannot be imported here ({err}); choose one of "
            f"{[n for n in FORECASTERS if n != 'pfn']}."
        ) from err
    return pfn_forecast


@dataclass(frozen=True)
class RuleDefaults:
    """The rules' stop probabilities that fit one forecaster's predictive distribution.

    A rule given no value of its own (``threshold=None``, ``delta=None``, ``quantile=None``)
    takes these for the forecaster it decides with: each forecaster's probabilities are
    calibrated differently, so one number does not fit all.

    Args:
        threshold: the convergence rule's stop probability, in (0, 1).
        delta: Domhan et al.'s sweep rule's stop probability, in (0, 1).
        quantile: the quantile ``PredictiveHalvingPruner`` scores a trial by, in (0, 1).
        source: where the values were chosen.
    """

    threshold: float = 0.05
    delta: float = 0.05
    quantile: float = 0.5
    source: str = "Domhan et al.'s 5% (and the median for halving)"


@dataclass(frozen=True)
class Forecaster:
    """A named forecaster.

    Args:
        name: its registry name.
        min_points: the fewest observed points it forecasts from (fewer: the rules say
            ``blind``).
        options: the keyword options it takes beyond ``(x, y, at, mode, bounds)``; the
            rules pass only these (e.g. ``calibration`` to ``forecast`` alone).
        description: one line for help texts.
        loader: returns the forecast function (imports lazily).
        handles_constant: it forecasts a constant curve (else the rules give no decision).
        rules: the rules' default stop probabilities with this forecaster.
    """

    name: str
    min_points: int
    options: frozenset[str]
    description: str
    loader: Callable[[], ForecastFunction] = field(repr=False)
    handles_constant: bool = False
    rules: RuleDefaults = field(default_factory=RuleDefaults)

    def load(self) -> ForecastFunction:
        """The forecast function (raises ImportError with the reason if unavailable)."""
        return self.loader()

    def applicable(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The subset of ``options`` this forecaster takes (None values dropped)."""
        return {k: v for k, v in options.items() if k in self.options and v is not None}

    def __call__(
        self,
        x: Sequence[float] | np.ndarray,
        y: Sequence[float] | np.ndarray,
        at: Sequence[float] | np.ndarray | float,
        mode: str = "max",
        bounds: Sequence[float] | None = None,
        **options: Any,
    ) -> PredictiveDistribution:
        """Forecasts with this forecaster; unknown options are an error naming them."""
        unknown = sorted(set(options) - self.options)
        if unknown:
            raise ValueError(
                f"forecaster {self.name!r} takes the options {sorted(self.options)}, got {unknown}."
            )
        return self.load()(x, y, at, mode=mode, bounds=bounds, **options)


PFN_THRESHOLD = 0.12
"""The convergence rule's stop probability with the PFN (chosen leave-one-task-out)."""
PFN_DELTA = 0.05
"""The sweep rule's stop probability with the PFN (chosen leave-one-task-out)."""
PFN_QUANTILE = 0.6
"""``PredictiveHalvingPruner``'s scoring quantile with the PFN (chosen leave-one-task-out)."""

FORECASTERS: dict[str, Forecaster] = {
    "forecast": Forecaster(
        "forecast",
        4,
        frozenset({"calibration", "tail", "max_gain", "min_f"}),
        "calibrated average of pow3/exp3/log-linear tail fits (1 ms)",
        _load_forecast,
    ),
    "ensemble": Forecaster(
        "ensemble",
        3,
        frozenset({"n_bootstrap", "seed", "families"}),
        "Domhan et al.'s 11-family BIC ensemble with a residual bootstrap (slower)",
        _load_ensemble,
    ),
    "pfn": Forecaster(
        "pfn",
        1,
        frozenset({"weights", "spread"}),
        "the learned prior-data fitted network (issue 24)",
        _load_pfn,
        handles_constant=True,
        rules=RuleDefaults(
            threshold=PFN_THRESHOLD,
            delta=PFN_DELTA,
            quantile=PFN_QUANTILE,
            source="leave-one-task-out on the 10 recorded sweeps "
            "(benchmarks/curves_pfn_rules.py, benchmarks/results/curves_pfn_rules.json)",
        ),
    ),
}
"""The forecasters by name."""

DEFAULT_FORECASTER = "pfn"
"""The forecaster the rules use unless told otherwise: the learned PFN (issue 24)."""


def check_forecaster(name: Any) -> str:
    """Validates a forecaster name; returns it.

    Raises:
        ValueError: naming ``forecaster``, the value and the valid names.
    """
    if not isinstance(name, str) or name not in FORECASTERS:
        raise ValueError(f"`forecaster` must be one of {list(FORECASTERS)}, got {name!r}.")
    return name


def get_forecaster(name: str) -> Forecaster:
    """The forecaster registered as ``name`` (a ValueError lists the valid names)."""
    return FORECASTERS[check_forecaster(name)]


def prob_improves(
    dist: PredictiveDistribution, target: float, best: float, mode: str
) -> np.ndarray:
    """P(the value reaches ``target``) at each position, with the target clipped to bounds.

    A target beyond the metric's bound (``best + min_delta`` past 1.0 for an accuracy) is
    clipped to the bound, and reaching the bound counts as improving; a run whose best
    already sits at the bound has nothing left to gain (0).
    """
    bounds = dist.bounds
    if bounds is not None:
        edge = bounds[1] if mode == "max" else bounds[0]
        at_or_past = (lambda v: v >= edge) if mode == "max" else (lambda v: v <= edge)
        if at_or_past(best):
            return np.zeros(len(dist.at))
        if at_or_past(target):
            # just inside the bound: mass at (or beyond) the bound reaches it
            target = math.nextafter(edge, -math.inf if mode == "max" else math.inf)
    return np.asarray(dist.prob_beats(target), dtype=float)
