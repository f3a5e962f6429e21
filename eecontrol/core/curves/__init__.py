"""Learning-curve prediction: curve families, predictive distributions, stopping rules.

The package is split by job:

* :mod:`~eecontrol.core.curves.families`: the eleven parametric families of Domhan,
  Springenberg and Hutter, "Speeding up Automatic Hyperparameter Optimization of Deep
  Neural Networks by Extrapolation of Learning Curves" (IJCAI 2015), and bounded
  least-squares fits of one family;
* :mod:`~eecontrol.core.curves.ensemble`: their BIC-weighted ensemble with a residual
  bootstrap (:func:`fit_curve`), for predicted trajectories;
* :mod:`~eecontrol.core.curves.rules`: the stopping rules and their :class:`RuleResult`;
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
from eecontrol.core.curves.rules import RuleResult, in_run_rule

__all__ = [
    "DECISIONS",
    "FAMILIES",
    "MODES",
    "TARGETS",
    "CrossRunPrediction",
    "CrossRunPredictor",
    "CurveFamily",
    "CurveFit",
    "CurvePrediction",
    "FamilyFit",
    "FinishedRun",
    "RuleResult",
    "check_bounds",
    "check_probability",
    "cross_run_rule",
    "curve_features",
    "fit_curve",
    "fit_family",
    "in_run_rule",
]
