"""PredictiveHalvingPruner: successive halving that promotes by predicted final value."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from eecontrol.sweep.halving import PredictiveHalvingPruner

DIGITS = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "digits_curves.json"


@pytest.fixture(scope="module")
def curves() -> dict[int, list[float]]:
    assert DIGITS.exists(), "the recorded digits sweep is missing"
    return {r["id"]: r["val_acc"] for r in json.loads(DIGITS.read_text())["runs"]}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"horizon": 1}, "`horizon` must be an integer in \\[2, inf\\)"),
        ({"reduction_factor": 1}, "`reduction_factor`"),
        ({"min_resource": 0}, "`min_resource`"),
        ({"quantile": 1.0}, "`quantile` must be a number in \\(0.0, 1.0\\)"),
        ({"bounds": (1, 0)}, "bounds"),
        ({"forecaster": "x"}, "`forecaster` must be one of \\['forecast'"),
    ],
)
def test_bad_arguments_name_the_option(kwargs, match):
    """Each row overrides one option of an otherwise valid pruner (horizon 10)."""
    with pytest.raises(ValueError, match=match):
        PredictiveHalvingPruner(**{"horizon": 10, **kwargs})


def test_rungs():
    assert PredictiveHalvingPruner(50).rungs() == [1, 3, 9, 27]
    assert PredictiveHalvingPruner(50, reduction_factor=4, min_resource=2).rungs() == [2, 8, 32]


def test_score_ranks_a_rising_real_curve_by_where_it_is_going(curves):
    """Digits runs 19 and 20 after 9 of 50 epochs: 20 is lower but still rising, and
    ends higher (0.993 vs 0.985); successive halving ranks it lower, the forecast higher."""
    p = PredictiveHalvingPruner(50, bounds=(0, 1))
    rising, ahead = np.array(curves[20][:9]), np.array(curves[19][:9])
    assert rising[-1] < ahead[-1] and max(curves[20]) > max(curves[19])  # the premise
    assert p.score(rising, "max") > p.score(ahead, "max")  # the default: the PFN, quantile 0.7
    averaged = PredictiveHalvingPruner(50, bounds=(0, 1), forecaster="forecast")
    assert averaged.score(rising, "max") > averaged.score(ahead, "max")
    for c in curves.values():
        v = np.array(c[:9])
        s = p.score(v, "max")
        assert v.max() <= s <= 1.0  # never below the best so far, never past the bound
    # too few points for the averaged forecast (4): the best value so far; a loss is
    # scored negated
    assert averaged.score(np.array([0.3, 0.5]), "max") == 0.5
    assert averaged.score(np.array([2.0, 1.5, 1.7]), "min") == -1.5
    # the default (the PFN) forecasts from one point, never below the best so far
    assert 0.5 <= p.score(np.array([0.3, 0.5]), "max") <= 1.0
    assert PredictiveHalvingPruner(50).score(np.array([2.0, 1.5, 1.7]), "min") >= -1.5


def _report(study, pruner_trial_values):
    """Runs one trial reporting ``values``; returns the number of reports before a prune."""
    trial = study.ask()
    for step, v in enumerate(pruner_trial_values):
        trial.report(v, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step + 1
    study.tell(trial, max(pruner_trial_values))
    return len(pruner_trial_values)


def test_in_a_study_each_rung_promotes_the_top_third_by_score(curves):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = PredictiveHalvingPruner(50, bounds=(0, 1))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    ids = sorted(curves)[:15]
    used = {i: _report(study, curves[i]) for i in ids}
    assert set(used.values()) <= {1, 3, 9, 27, 50}
    assert used[ids[0]] == 50  # the first trial leads every rung
    # asynchronous halving: a trial reaching rung k goes on iff its score is among the top
    # max(n // 3, 1) of the n trials that had reached rung k by then
    for k, rung in enumerate(pruner.rungs()):
        key = f"eecontrol_halving:rung_{k}"
        seen: list[float] = []
        reached = [t for t in study.trials if key in t.system_attrs]
        assert reached, f"no trial reached rung {rung}"
        for t in reached:
            seen.append(t.system_attrs[key])
            keep = max(len(seen) // 3, 1)
            promoted = t.system_attrs[key] >= sorted(seen, reverse=True)[keep - 1]
            assert promoted == (len(t.intermediate_values) > rung), (t.number, rung)
    assert sum(used.values()) < 0.5 * 50 * len(ids)
    # a diverged trial is pruned at its rung, even when it leads
    fresh = optuna.create_study(direction="maximize", pruner=pruner)
    assert _report(fresh, [0.5, 0.6, math.nan, 0.7]) == 3


def test_minimised_loss_prunes_the_worse_curve():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize", pruner=PredictiveHalvingPruner(20, min_resource=4)
    )
    good = [1.0 / (1 + 0.3 * i) for i in range(20)]
    assert _report(study, good) == 20
    assert _report(study, [2.0 + 0.01 * i for i in range(20)]) == 4  # worse and rising


def test_the_forecaster_scores_and_short_curves_fall_back_to_the_best(curves):
    """forecaster="ensemble" scores with the ensemble's quantile; below a forecaster's
    points the score is the best value so far."""
    curve = np.asarray(curves[min(curves)][:9], dtype=float)
    default = PredictiveHalvingPruner(50, bounds=(0, 1), forecaster="forecast")
    ensemble = PredictiveHalvingPruner(50, bounds=(0, 1), forecaster="ensemble")
    assert ensemble.forecaster == "ensemble" and default.forecaster == "forecast"
    assert PredictiveHalvingPruner(50).forecaster == "pfn"  # the default (issue 24)
    a, b = default.score(curve, "max"), ensemble.score(curve, "max")
    assert a >= curve.max() and b >= curve.max() and a != b
    assert default.score(curve[:3], "max") == curve[:3].max()  # forecast needs 4 points
    assert ensemble.score(curve[:3], "max") >= curve[:3].max()  # the ensemble takes 3
