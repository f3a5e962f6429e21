"""``LearningCurvePruner``: the learning-curve stopping rules as an Optuna pruner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from eecontrol.core.checks import check_bounds, check_probability, check_range
from eecontrol.core.curves import FinishedRun, cross_run_rule, in_run_rule


class LearningCurvePruner(BasePruner):
    """Prunes trials whose learning curve cannot win, with the rules of
    :mod:`eecontrol.core.curves`.

    Works with plain Optuna: report the metric with ``trial.report(value, step)`` and
    call ``trial.should_prune()``; ``study.optimize`` records pruned trials as ``PRUNED``.
    The in-run rule extrapolates the trial's own curve (``step + 1`` is the position) to
    ``horizon``; the cross-run rule (Baker et al. 2017) trains a nu-SVR on the curves of
    ``COMPLETE`` trials (index-aligned) and their numeric ``trial.params``, and compares
    with the best completed trial's value. A trial is pruned when either rule says stop.

    An in-run stop means the trial has converged, not that it lost; Optuna still records
    it as ``PRUNED`` (a pruner cannot complete a trial), so ``study.best_trial`` ignores
    it. Read its best intermediate value (``max(trial.intermediate_values.values())``)
    when picking the winner, or use ``in_run=False`` in Optuna and the in-run rule through
    :class:`~eecontrol.callbacks.curve_stopping.LearningCurveStopping`, whose stopped runs
    return their best value as a completed objective.

    Example::

        pruner = LearningCurvePruner(horizon=30)
        study = optuna.create_study(direction="maximize", pruner=pruner)

    Args:
        horizon: the last step a trial reports (its training length), > 0.
        in_run: use the in-run rule.
        cross_run: use the cross-run rule.
        min_delta: improvement that counts for the in-run rule, >= 0.
        threshold: in-run stop probability, in (0, 1).
        delta: cross-run stop probability, in (0, 1).
        min_points: reports before any decision, >= 3.
        min_finished: completed trials before the cross-run rule decides, >= 2.
        min_r2: no in-run decision while the best family explains less of the curve.
        n_bootstrap: bootstrap draws per curve family.
        seed: seed of the bootstrap.
        bounds: the metric's range ``[low, high]`` (``[0, 1]`` for an accuracy), or None;
            the in-run prediction is clipped to it, and a cross-run result cannot pass it.

    Attributes:
        last_reason: ``{trial number: reason}`` of every trial this pruner pruned.
    """

    def __init__(
        self,
        horizon: int,
        in_run: bool = True,
        cross_run: bool = True,
        min_delta: float = 0.0,
        threshold: float = 0.05,
        delta: float = 0.05,
        min_points: int = 5,
        min_finished: int = 5,
        min_r2: float = 0.5,
        n_bootstrap: int = 100,
        seed: int = 0,
        bounds: Sequence[float] | None = None,
    ) -> None:
        # the same checks and messages as LearningCurveStopping's
        check_range("horizon", horizon, low=0, low_inclusive=False)
        check_range("min_delta", min_delta, low=0.0)
        check_probability("threshold", threshold)
        check_probability("delta", delta)
        check_range("min_points", min_points, low=3, integer=True)
        check_range("min_finished", min_finished, low=2, integer=True)
        check_range("min_r2", min_r2, low=0.0, high=1.0)
        check_range("n_bootstrap", n_bootstrap, low=1, integer=True)
        check_range("seed", seed, low=0, integer=True)
        self.horizon = float(horizon)
        self.in_run, self.cross_run = bool(in_run), bool(cross_run)
        self.min_delta, self.threshold, self.delta = float(min_delta), threshold, delta
        self.min_points, self.min_finished = int(min_points), int(min_finished)
        self.min_r2, self.n_bootstrap, self.seed = min_r2, n_bootstrap, seed
        self.bounds = check_bounds(bounds)
        self.last_reason: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether to prune ``trial`` now (called by ``trial.should_prune()``)."""
        steps = sorted(trial.intermediate_values)
        values = np.array([trial.intermediate_values[s] for s in steps], dtype=float)
        if len(values) < self.min_points or not np.all(np.isfinite(values)):
            return False
        mode = "max" if study.direction == StudyDirection.MAXIMIZE else "min"
        if self.in_run:
            result = in_run_rule(
                np.asarray(steps, dtype=float) + 1.0,
                values,
                self.horizon + 1.0,
                mode=mode,
                min_delta=self.min_delta,
                threshold=self.threshold,
                min_points=self.min_points,
                min_r2=self.min_r2,
                n_bootstrap=self.n_bootstrap,
                seed=self.seed,
                bounds=self.bounds,
            )
            if result.stop:
                self.last_reason[trial.number] = result.reason
                return True
        if self.cross_run:
            finished = []
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                curve = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
                if t.value is not None:
                    finished.append(FinishedRun(curve, dict(t.params), float(t.value)))
            result = cross_run_rule(
                values,
                finished,
                dict(trial.params),
                mode=mode,
                delta=self.delta,
                min_points=self.min_points,
                min_finished=self.min_finished,
                bounds=self.bounds,
            )
            if result.stop:
                self.last_reason[trial.number] = result.reason
                return True
        return False
