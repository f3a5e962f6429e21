"""``LearningCurvePruner``: the learning-curve stopping rules as an Optuna pruner."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from eecontrol.core.checks import check_bounds, check_choice, check_range, check_rule_args
from eecontrol.core.curves import (
    CrossRunPredictor,
    FinishedRun,
    RuleResult,
    convergence_rule,
    cross_run_rule,
    in_run_rule,
    sweep_rule,
)
from eecontrol.core.curves.forecasters import DEFAULT_FORECASTER, check_forecaster

RULES = ("convergence", "sweep", "ensemble")
REASON_ATTR = "eecontrol_prune_reason"


class LearningCurvePruner(BasePruner):
    """Prunes trials whose learning curve cannot win, with the rules of
    :mod:`eecontrol.core.curves`.

    Works with plain Optuna: report the metric with ``trial.report(value, step)`` and
    call ``trial.should_prune()``; ``study.optimize`` records pruned trials as ``PRUNED``.
    The in-run rule extrapolates the trial's own curve (``step + 1`` is the position) to
    ``horizon``: ``rule="convergence"`` (default) stops a trial unlikely to beat its own
    best by ``min_delta`` (None: its noise); ``rule="sweep"`` is Domhan et al.'s rule, P(value
    at the horizon > the best value any trial of the study reported) < ``threshold``;
    ``rule="ensemble"`` is the 11-family ensemble in the convergence question. The
    convergence and sweep rules forecast with ``forecaster`` (a name in
    :data:`~eecontrol.core.curves.forecasters.FORECASTERS`); the convergence rule never
    prunes at a report that set the trial's best. The
    cross-run rule (Baker et al. 2017) trains a nu-SVR on the curves of ``COMPLETE``
    trials (index-aligned) and their numeric ``trial.params``, and compares with the best
    completed trial's value; the fitted predictor is reused while the completed trials and
    the curve length stay the same. A trial is pruned when either rule says stop; the
    reason is stored on the trial as the user attribute ``eecontrol_prune_reason``.

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
        cross_run: use the cross-run rule (at least one of the two must be on).
        min_delta: improvement that counts for the in-run rule, >= 0, or None (the
            trial's noise for ``convergence``, 0 for ``ensemble``).
        threshold: in-run stop probability, in (0, 1); None: the forecaster's own
            (:class:`~eecontrol.core.curves.forecasters.RuleDefaults`; 0.05 for the
            ``ensemble`` rule).
        rule: the in-run rule: ``convergence``, ``sweep`` or ``ensemble``.
        delta: cross-run stop probability, in (0, 1).
        min_points: reports before any decision, >= 1 (below the forecaster's own
            minimum the in-run rule is blind and does not prune).
        min_finished: completed trials before the cross-run rule decides, >= 2.
        min_r2: no in-run decision while the best family explains less of the curve.
        n_bootstrap: bootstrap draws per curve family.
        seed: seed of the bootstrap.
        bounds: the metric's range ``[low, high]`` (``[0, 1]`` for an accuracy), or None;
            the in-run prediction is clipped to it, and a cross-run result cannot pass it.
        forecaster: the forecaster of the ``convergence`` and ``sweep`` rules
            (``forecast``, ``ensemble`` or ``pfn``).

    Raises:
        ValueError: for a bad option (named, with its valid range), or with both rules
            off (it would prune nothing).

    Attributes:
        last_reason: ``{trial number: reason}`` of every trial this pruner pruned.
    """

    def __init__(
        self,
        horizon: int,
        in_run: bool = True,
        cross_run: bool = True,
        min_delta: float | None = None,
        threshold: float | None = None,
        rule: str = "convergence",
        delta: float = 0.05,
        min_points: int = 5,
        min_finished: int = 5,
        min_r2: float = 0.5,
        n_bootstrap: int = 100,
        seed: int = 0,
        bounds: Sequence[float] | None = None,
        forecaster: str = DEFAULT_FORECASTER,
    ) -> None:
        # the same checks and messages as LearningCurveStopping's
        check_range("horizon", horizon, low=0, low_inclusive=False)
        if min_delta is not None:
            check_range("min_delta", min_delta, low=0.0)
        self.rule = check_choice("rule", rule, RULES)
        given = {} if threshold is None else {"threshold": threshold}
        check_rule_args({**given, "delta": delta}, min_points=min_points, least_points=1)
        if not in_run and not cross_run:
            raise ValueError(
                "`in_run` and `cross_run` are both False: LearningCurvePruner would prune "
                "nothing; set `in_run=True` (the trial's own curve) or `cross_run=True` "
                "(finished trials), or use optuna.pruners.NopPruner for no pruning."
            )
        self.forecaster = check_forecaster(forecaster)
        check_range("min_finished", min_finished, low=2, integer=True)
        check_range("min_r2", min_r2, low=0.0, high=1.0)
        check_range("n_bootstrap", n_bootstrap, low=1, integer=True)
        check_range("seed", seed, low=0, integer=True)
        self.horizon = float(horizon)
        self.in_run, self.cross_run = bool(in_run), bool(cross_run)
        self.min_delta = None if min_delta is None else float(min_delta)
        self.threshold, self.delta = threshold, delta
        self.min_points, self.min_finished = int(min_points), int(min_finished)
        self.min_r2, self.n_bootstrap, self.seed = min_r2, n_bootstrap, seed
        self.bounds = check_bounds(bounds)
        self.last_reason: dict[int, str] = {}
        self._predictors: OrderedDict[tuple, CrossRunPredictor] = OrderedDict()

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether to prune ``trial`` now (called by ``trial.should_prune()``)."""
        steps = sorted(trial.intermediate_values)
        values = np.array([trial.intermediate_values[s] for s in steps], dtype=float)
        if len(values) < self.min_points or not np.all(np.isfinite(values)):
            return False
        mode = "max" if study.direction == StudyDirection.MAXIMIZE else "min"
        result = None
        if self.in_run:
            result = self._in_run(study, trial, np.asarray(steps, dtype=float) + 1.0, values, mode)
        if (result is None or not result.stop) and self.cross_run:
            result = self._cross_run(study, trial, values, mode)
        if result is None or not result.stop:
            return False
        self.last_reason[trial.number] = result.reason
        study._storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, result.reason)
        return True

    def _in_run(
        self, study: optuna.Study, trial: FrozenTrial, x: np.ndarray, values: np.ndarray, mode: str
    ) -> RuleResult:
        horizon = self.horizon + 1.0
        # the options every in-run rule takes
        common = {
            "mode": mode,
            "min_points": self.min_points,
            "bounds": self.bounds,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
        }
        if self.rule == "ensemble":
            return in_run_rule(
                x,
                values,
                horizon,
                min_delta=self.min_delta or 0.0,
                threshold=0.05 if self.threshold is None else self.threshold,
                min_r2=self.min_r2,
                **common,
            )
        if self.rule == "convergence":
            return convergence_rule(
                x,
                values,
                horizon,
                min_delta=self.min_delta,
                threshold=self.threshold,
                forecaster=self.forecaster,
                **common,
            )
        best = None
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number:
                continue
            for v in t.intermediate_values.values():
                if math.isfinite(v) and (best is None or (v > best if mode == "max" else v < best)):
                    best = v
        return sweep_rule(
            x,
            values,
            horizon,
            best,
            delta=self.threshold,
            forecaster=self.forecaster,
            **common,
        )

    def _cross_run(
        self, study: optuna.Study, trial: FrozenTrial, values: np.ndarray, mode: str
    ) -> RuleResult:
        finished, numbers = [], []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            curve = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
            if t.value is not None:
                finished.append(FinishedRun(curve, dict(t.params), float(t.value)))
                numbers.append(t.number)
        n = len(values)
        usable = [
            (r, k)
            for r, k in zip(finished, numbers)
            if len(r.values) >= n and np.all(np.isfinite(r.values[:n]))
        ]
        predictor = None
        if len(usable) >= self.min_finished:
            key = (n, tuple(k for _, k in usable))
            predictor = self._predictors.get(key)
            if predictor is None:
                predictor = CrossRunPredictor(n, mode=mode).fit([r for r, _ in usable])
                self._predictors[key] = predictor
                while len(self._predictors) > 256:
                    self._predictors.popitem(last=False)
        return cross_run_rule(
            values,
            finished,
            dict(trial.params),
            mode=mode,
            delta=self.delta,
            min_points=self.min_points,
            min_finished=self.min_finished,
            bounds=self.bounds,
            predictor=predictor,
        )
