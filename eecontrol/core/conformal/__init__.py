"""Conformalized early stopping (CES): exact conformal inference from one early-stopped run.

Liang, Zhou, Sesia, "Conformal inference is (almost) free for neural networks trained
with early stopping", ICML 2023.

A run stores T candidate models; on the hold-out ("es-cal") set of n points each has
per-sample outputs and a hold-out loss ``L_t`` (a sum over the whole set). For a test point
(and, for classification and regression, each candidate label ``y``) CES selects
``t* = argmin_t L_t + loss_t(test point)`` and computes the conformal p-value of the test
point with model ``t*``'s calibration scores on the same hold-out set. Every function here
is vectorised over test points, candidate labels and candidates (torch), chunked over test
points only to bound memory.

Conventions: nonconformity scores are "larger = stranger" everywhere; a p-value is
``(1 + #{hold-out scores >= test score}) / (n + 1)``; a set keeps the labels with
``p > alpha``; regression intervals use the ``ceil((1 - alpha)(n + 1))``-th smallest
absolute residual, which is infinite (the whole line) when that rank exceeds n.
Ties in the argmin go to the earliest candidate.
"""

from __future__ import annotations

from eecontrol.core.conformal._common import conformal_rank
from eecontrol.core.conformal.classification import (
    ClassificationPValues,
    aps_scores,
    ces_classification_p_values,
    prediction_sets,
    split_classification_p_values,
)
from eecontrol.core.conformal.cqr import (
    ces_quantile_intervals,
    check_quantile_levels,
    pinball_loss,
    split_quantile_intervals,
)
from eecontrol.core.conformal.intervals import (
    RegressionIntervals,
    ces_regression_intervals,
    split_regression_intervals,
)
from eecontrol.core.conformal.outliers import (
    OutlierPValues,
    benjamini_hochberg,
    ces_outlier_p_values,
    split_outlier_p_values,
)
from eecontrol.core.conformal.selection import naive_corrected_alpha

__all__ = [
    "ClassificationPValues",
    "OutlierPValues",
    "RegressionIntervals",
    "aps_scores",
    "benjamini_hochberg",
    "ces_classification_p_values",
    "ces_outlier_p_values",
    "ces_quantile_intervals",
    "ces_regression_intervals",
    "check_quantile_levels",
    "conformal_rank",
    "naive_corrected_alpha",
    "pinball_loss",
    "prediction_sets",
    "split_classification_p_values",
    "split_outlier_p_values",
    "split_quantile_intervals",
    "split_regression_intervals",
]
