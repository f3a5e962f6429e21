"""LearningCurvePruner in plain Optuna: losers are PRUNED, the winner completes."""

from __future__ import annotations

import math

import optuna
import pytest

from eecontrol.sweep.pruner import LearningCurvePruner

optuna.logging.set_verbosity(optuna.logging.WARNING)


def curve(lr: float, step: int) -> float:
    """A saturating accuracy whose ceiling peaks at lr = 1e-3."""
    top = 0.95 - 0.15 * (math.log10(lr) + 3) ** 2
    return top - (top - 0.1) * math.exp(-0.3 * (step + 1))


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    best = -math.inf
    for step in range(20):
        value = curve(lr, step)
        best = max(best, value)
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return best


def test_plain_optuna_prunes_losers_and_keeps_the_best():
    pruner = LearningCurvePruner(horizon=19, in_run=False, min_points=3, min_finished=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for lr in (2e-3, 5e-4, 3e-4, 1e-5, 3e-2, 1e-3):
        study.enqueue_trial({"lr": lr})
    study.optimize(objective, n_trials=6)
    states = [t.state for t in study.trials]
    assert states[:3] == [optuna.trial.TrialState.COMPLETE] * 3
    assert states[3] == states[4] == optuna.trial.TrialState.PRUNED
    assert states[5] == optuna.trial.TrialState.COMPLETE  # the winner, last, is not pruned
    assert len(study.trials[3].intermediate_values) == 3  # stopped at its first decision
    assert study.best_params["lr"] == pytest.approx(1e-3)
    assert "finished run" in pruner.last_reason[3]


def test_in_run_rule_prunes_a_flat_trial():
    pruner = LearningCurvePruner(horizon=60, cross_run=False, min_delta=0.01, n_bootstrap=30)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.enqueue_trial({"lr": 1e-3})

    def flat(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        for step in range(60):
            trial.report(0.9 - 0.6 * math.exp(-0.6 * (step + 1)) + 0.002 * (-1) ** step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 0.9

    study.optimize(flat, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert len(study.trials[0].intermediate_values) < 30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": 0}, "`horizon` must be a number in (0, inf)"),
        ({"horizon": 10, "threshold": 1.0}, "`threshold` must be a number in (0.0, 1.0)"),
        ({"horizon": 10, "delta": 0.0}, "`delta` must be a number in (0.0, 1.0)"),
        ({"horizon": 10, "min_points": 0}, "`min_points` must be an integer in [1, inf)"),
        ({"horizon": 10, "min_finished": 1}, "`min_finished` must be an integer in [2, inf)"),
        ({"horizon": 10, "min_delta": -0.1}, "`min_delta` must be a number in [0.0, inf)"),
        ({"horizon": 10, "min_r2": 1.5}, "`min_r2` must be a number in [0.0, 1.0]"),
        ({"horizon": 10, "n_bootstrap": 0}, "`n_bootstrap` must be an integer in [1, inf)"),
        ({"horizon": 10, "bounds": [1, 1]}, "`bounds` must be [low, high] with low < high"),
        ({"horizon": 10, "rule": "median"}, "`rule` must be one of"),
        ({"horizon": 10, "forecaster": "lcpfn"}, "`forecaster` must be one of ['forecast'"),
        # issue 25 item 13: both rules off would prune nothing, silently
        ({"horizon": 10, "in_run": False, "cross_run": False}, "`in_run` and `cross_run`"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError) as err:
        LearningCurvePruner(**kwargs)
    assert message in str(err.value)


def test_the_prune_reason_is_stored_on_the_trial_and_the_predictor_is_reused(monkeypatch):
    from eecontrol.core.curves import CrossRunPredictor

    fits = []
    original = CrossRunPredictor.fit

    def counting_fit(self, runs):
        fits.append((self.tau, len(runs)))
        return original(self, runs)

    monkeypatch.setattr(CrossRunPredictor, "fit", counting_fit)
    pruner = LearningCurvePruner(horizon=19, in_run=False, min_points=3, min_finished=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for lr in (2e-3, 5e-4, 3e-4, 1e-5, 3e-2, 1e-3):
        study.enqueue_trial({"lr": lr})
    study.optimize(objective, n_trials=6)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "the scripted losers must be pruned"
    for t in pruned:
        reason = t.user_attrs["eecontrol_prune_reason"]
        assert "finished run" in reason and reason == pruner.last_reason[t.number]
    # one fit per (curve length, completed trials): the two losers at step 3 share one
    assert len(fits) == len(set(fits)) and fits.count((3, 3)) == 1


def test_sweep_rule_prunes_a_trial_that_cannot_reach_the_study_best():
    pruner = LearningCurvePruner(horizon=30, cross_run=False, rule="sweep", min_points=6)
    study = optuna.create_study(direction="maximize", pruner=pruner)

    def scripted(trial: optuna.Trial) -> float:
        top = trial.suggest_float("top", 0.1, 1.0)
        best = -math.inf
        for step in range(30):
            value = top - (top - 0.1) * math.exp(-0.5 * (step + 1))
            best = max(best, value)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    for top in (0.95, 0.5, 0.97):
        study.enqueue_trial({"top": top})
    study.optimize(scripted, n_trials=3)
    states = [t.state for t in study.trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.COMPLETE,  # it leads the study: never pruned by this rule
    ]
    assert "sweep's best" in study.trials[1].user_attrs["eecontrol_prune_reason"]
    assert len(study.trials[1].intermediate_values) < 15


E1_CURVE = (0.241, 0.365, 0.461, 0.526, 0.542, 0.433, 0.652)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("forecaster", ["forecast", "ensemble"])
def test_e1_a_trial_is_not_pruned_at_a_new_best(seed, forecaster):
    """Issue 24 E1 in plain Optuna: the trial reporting the E1 curve (horizon 14) is not
    pruned at the 0.652 report that set its best."""
    import random

    rng = random.Random(seed)
    values = [min(max(v + rng.gauss(0.0, 0.005), 0.0), 1.0) for v in E1_CURVE]
    assert values[-1] > max(values[:-1]) + 0.05
    pruner = LearningCurvePruner(
        horizon=13, cross_run=False, bounds=(0, 1), forecaster=forecaster, n_bootstrap=30
    )
    assert pruner.forecaster == forecaster
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    decisions = []
    for step, value in enumerate(values):
        trial.report(value, step)
        decisions.append(trial.should_prune())
    assert len(decisions) == 7 and not decisions[-1], pruner.last_reason
