"""The stopping policies a replay compares: EarlyStopping's rule, Optuna's pruners and this
project's (see :mod:`eecontrol.sweep.replay`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from eecontrol.core.curves.forecasters import (
    DEFAULT_FORECASTER,
    check_forecaster,
)
from eecontrol.sweep.replay.loading import Sweep


def early_stopping_epochs(
    values: Sequence[float], mode: str, patience: int = 5, min_delta: float = 0.0
) -> int:
    """Epochs a run trains under Lightning's ``EarlyStopping`` (its rule, without Lightning).

    A value improves when it beats the best so far by more than ``min_delta``; the run
    stops when ``patience`` validations in a row did not improve.
    """
    best = math.inf if mode == "min" else -math.inf
    wait = 0
    for i, v in enumerate(values):
        improved = v < best - min_delta if mode == "min" else v > best + min_delta
        if improved:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return i + 1
    return len(values)


@dataclass(frozen=True)
class Policy:
    """A stopping policy to replay.

    Args:
        pruner: a factory of a fresh Optuna pruner, or None for ``early_stopping``.
        patience: the EarlyStopping patience (when ``pruner`` is None).
    """

    pruner: Callable[[], optuna.pruners.BasePruner] | None = None
    patience: int = 5


def guess_bounds(sweep: Sweep) -> tuple[float, float] | None:
    """``(0, 1)`` for a maximised metric whose every value lies in [0, 1] (an accuracy)."""
    if sweep.mode == "max" and all(0.0 <= v <= 1.0 for r in sweep.runs for v in r.values):
        return (0.0, 1.0)
    return None


def default_policies(
    budget: int,
    bounds: Sequence[float] | None = None,
    patience: int = 5,
    forecasters: Sequence[str] = (DEFAULT_FORECASTER,),
) -> dict[str, Policy]:
    """Every policy the replay compares, by name.

    Ours: :class:`~eecontrol.sweep.pruner.LearningCurvePruner` with its in-run rule
    alone (``ours_in_run``), Domhan et al.'s sweep rule alone (``ours_sweep_rule``), the
    cross-run rule alone (``ours_cross_run``, no forecaster), its default combination
    (``ours_both``), and :class:`~eecontrol.sweep.halving.PredictiveHalvingPruner`
    (``ours_predictive_halving``). The forecasting policies come once per forecaster in
    ``forecasters``: with the default forecaster under these names, with another one
    under the name plus ``_<forecaster>`` (``ours_in_run_pfn``).

    Args:
        budget: validations of a full run (the pruners' horizon).
        bounds: the metric's range for this project's pruners (None: unbounded).
        patience: the EarlyStopping patience.
        forecasters: names in :data:`~eecontrol.core.curves.forecasters.FORECASTERS`.

    Raises:
        ValueError: for an unknown forecaster (the message lists the valid names).
    """
    from eecontrol.sweep.halving import PredictiveHalvingPruner
    from eecontrol.sweep.pruner import LearningCurvePruner

    names = [check_forecaster(f) for f in forecasters]
    b = tuple(bounds) if bounds is not None else None

    def ours(**kwargs: Any) -> Callable[[], optuna.pruners.BasePruner]:
        return lambda: LearningCurvePruner(horizon=budget, bounds=b, **kwargs)

    def halving(forecaster: str) -> Callable[[], optuna.pruners.BasePruner]:
        return lambda: PredictiveHalvingPruner(horizon=budget, bounds=b, forecaster=forecaster)

    out = {
        "none": Policy(optuna.pruners.NopPruner),
        f"early_stopping_p{patience}": Policy(None, patience),
        "median": Policy(optuna.pruners.MedianPruner),
        "successive_halving": Policy(optuna.pruners.SuccessiveHalvingPruner),
        "hyperband": Policy(
            lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=budget)
        ),
    }
    for k, f in enumerate(names):
        tag = "" if f == DEFAULT_FORECASTER else f"_{f}"
        out[f"ours_in_run{tag}"] = Policy(ours(cross_run=False, forecaster=f))
        out[f"ours_sweep_rule{tag}"] = Policy(ours(cross_run=False, rule="sweep", forecaster=f))
        if k == 0:
            out["ours_cross_run"] = Policy(ours(in_run=False))
        out[f"ours_both{tag}"] = Policy(ours(forecaster=f))
        if budget >= 2:
            out[f"ours_predictive_halving{tag}"] = Policy(halving(f))
    return out
