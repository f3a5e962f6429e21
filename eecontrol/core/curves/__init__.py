"""Learning-curve prediction: curve families, predictive distributions, stopping rules.

The package is split by job:

* :mod:`~eecontrol.core.curves.families`: the eleven parametric families of Domhan,
  Springenberg and Hutter, "Speeding up Automatic Hyperparameter Optimization of Deep
  Neural Networks by Extrapolation of Learning Curves" (IJCAI 2015), and bounded
  least-squares fits of one family;
* :mod:`~eecontrol.core.curves.ensemble`: their BIC-weighted ensemble with a residual
  bootstrap (:func:`fit_curve`), for predicted trajectories;
* :mod:`~eecontrol.core.curves.predictive`: the calibrated predictive distribution
  (:func:`forecast`): robust families fitted to the curve's tail, with a score table
  learned on recorded real curves (:mod:`~eecontrol.core.curves.calibration`);
* :mod:`~eecontrol.core.curves.forecasters`: the forecasters by name (``forecast``,
  ``ensemble``, ``pfn``) and the :class:`PredictiveDistribution` protocol they return;
* :mod:`~eecontrol.core.curves.rules`: the stopping rules (convergence, Domhan et al.'s
  sweep rule, the ensemble's in-run rule);
* :mod:`~eecontrol.core.curves.result`: :class:`RuleResult`, what every rule returns, and
  how a probability rule decides;
* :mod:`~eecontrol.core.curves.cross_run`: the cross-run predictor of Baker, Gupta,
  Raskar and Naik, "Accelerating Neural Architecture Search using Performance
  Prediction" (2017), and its rule.

Conventions. ``x`` is any strictly increasing positive position (epoch, optimizer step,
validation index or training-set size); ``mode`` is ``"max"`` for a metric to maximise
(accuracy) and ``"min"`` for one to minimise (loss). Internally every curve is mapped to
a *gain* scale where larger is better and the observed part spans [1, 2]:
``u = x / x[0]`` and ``g = 1 + (s * y - min(s * y)) / range(s * y)`` with ``s = +1``
(max) or ``-1`` (min). Results are mapped back to the caller's units.
"""

from eecontrol.core.checks import check_bounds, check_probability
from eecontrol.core.curves.cross_run import (
    CrossRunPrediction,
    CrossRunPredictor,
    FinishedRun,
    cross_run_rule,
    curve_features,
)
from eecontrol.core.curves.ensemble import CurveFit, CurvePrediction, fit_curve
from eecontrol.core.curves.families import (
    DECISIONS,
    FAMILIES,
    MODES,
    TARGETS,
    CurveFamily,
    FamilyFit,
    fit_family,
)
from eecontrol.core.curves.forecasters import (
    DEFAULT_FORECASTER,
    FORECASTERS,
    EnsembleForecast,
    Forecaster,
    PredictiveDistribution,
    check_forecaster,
    ensemble_forecast,
    get_forecaster,
)
from eecontrol.core.curves.predictive import (
    CALIBRATION_FILE,
    Calibration,
    Forecast,
    calibration_scores,
    default_calibration,
    forecast,
    noise_sd,
)
from eecontrol.core.curves.rules import RuleResult, convergence_rule, in_run_rule, sweep_rule

__all__ = [
    "CALIBRATION_FILE",
    "DECISIONS",
    "DEFAULT_FORECASTER",
    "FAMILIES",
    "FORECASTERS",
    "MODES",
    "TARGETS",
    "Calibration",
    "CrossRunPrediction",
    "CrossRunPredictor",
    "CurveFamily",
    "CurveFit",
    "CurvePrediction",
    "EnsembleForecast",
    "FamilyFit",
    "FinishedRun",
    "Forecast",
    "Forecaster",
    "PredictiveDistribution",
    "RuleResult",
    "calibration_scores",
    "check_bounds",
    "check_forecaster",
    "check_probability",
    "convergence_rule",
    "cross_run_rule",
    "curve_features",
    "default_calibration",
    "ensemble_forecast",
    "fit_curve",
    "fit_family",
    "forecast",
    "get_forecaster",
    "in_run_rule",
    "noise_sd",
    "sweep_rule",
]
