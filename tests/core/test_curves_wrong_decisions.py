"""The wrong decisions E1-E5 of issue 24, each a test across seeds (E6, the one forecaster,
is a callback test in ``tests/callbacks/test_curve_stopping.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from eecontrol.core.curves import convergence_rule, fit_curve, in_run_rule, sweep_rule

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
SEEDS = range(5)
E1_CURVE = (0.241, 0.365, 0.461, 0.526, 0.542, 0.433, 0.652)


def default_forecaster() -> str:
    from eecontrol.core.curves.forecasters import DEFAULT_FORECASTER

    return DEFAULT_FORECASTER


def noisy(values, seed: int, sd: float, bounds=(0.0, 1.0)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.asarray(values, dtype=float) + rng.normal(0.0, sd, len(values)), *bounds)


# --- E1: never stop at a validation that set the run's best ---------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_e1_no_rule_stops_at_a_new_best(seed):
    """The issue's curve: the forecast is flat near the mean of the last 3 points, the
    noise-scaled min_delta 0.064, and the old rule stopped at the 0.652 validation."""
    y = noisy(E1_CURVE, seed, 0.005)
    assert y[-1] > y[:-1].max() + 0.05  # the last validation set the run's best
    x = np.arange(1, len(y) + 1, dtype=float)
    for bounds in ((0.0, 1.0), None):
        r = convergence_rule(x, y, 14, bounds=bounds)
        assert r.decision == "continue", r
        assert "set the run's best" in r.reason
        assert r.probability is not None and r.predicted_final is not None  # still reported
    r = in_run_rule(x, y, 14, min_delta=0.064, n_bootstrap=30, seed=seed, bounds=(0, 1))
    assert r.decision == "continue", r
    # the next validation, below the best, may stop: the guard is for the new best only
    y2 = np.append(y, y[-1] - 0.1)
    r2 = convergence_rule(np.arange(1, 9, dtype=float), y2, 14, bounds=(0, 1))
    assert "set the run's best" not in r2.reason


def test_e1_on_every_recorded_curve_no_stop_lands_on_a_new_best():
    """Every third recorded real curve, every prefix from 5 points: the convergence rule
    never stops where the latest validation beat the previous best by more than the
    improvement that counts (its noise-scaled min_delta); it did before the fix."""
    checked = stops = 0
    for path in sorted(DATA.glob("*_curves.json")):
        data = json.loads(path.read_text())
        monitor, mode = data.get("monitor", "val_acc"), data.get("mode", "max")
        b = int(data["epoch_budget"])
        bounds = (0.0, 1.0) if mode == "max" else None
        x = np.arange(1, b + 1, dtype=float)
        for run in data["runs"][::3]:
            c = np.asarray(run[monitor][:b], dtype=float)
            g = c if mode == "max" else -c  # larger is better
            for n in range(5, b):
                if g[n - 1] <= g[: n - 1].max():
                    continue  # not a new best
                r = convergence_rule(x[:n], c[:n], b, mode=mode, bounds=bounds)
                if r.min_delta is None or g[n - 1] <= g[: n - 1].max() + r.min_delta:
                    continue  # within the improvement that counts: not an improvement
                checked += 1
                stops += r.stop
                assert not r.stop, (path.name, run.get("id"), n, r.reason)
    assert checked > 200, checked


# --- E2: targets beyond the bound are clipped; reaching the bound counts -----------------


@pytest.mark.parametrize("seed", SEEDS)
def test_e2_a_target_beyond_the_bound_is_clipped_to_it(seed):
    """A run rising towards 1.0: best + min_delta lies beyond the bound, which used to give
    P = 0 and a stop; the target is the bound, and reaching it counts."""
    y = noisy([0.5, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.975, 0.98, 0.984], seed, 0.002)
    y = np.minimum(y, 0.99)
    y[-1] = y.max() - 0.001  # not a new best: E1's guard is not what keeps it running
    x = np.arange(1, len(y) + 1, dtype=float)
    r = convergence_rule(x, y, 50, min_delta=0.064, bounds=(0, 1))
    assert r.best + 0.064 > 1.0
    assert r.probability > 0.05 and r.decision == "continue", r
    fit = fit_curve(x, y, n_bootstrap=30, seed=seed, bounds=(0, 1))
    r = in_run_rule(x, y, 50, min_delta=0.064, fit=fit)
    assert r.probability > 0.0, r


def test_e2_a_best_at_the_bound_has_nothing_left_to_gain():
    y = [0.6, 0.9, 0.97, 1.0, 1.0, 0.99]
    x = np.arange(1, 7, dtype=float)
    r = convergence_rule(x, y, 50, bounds=(0, 1))
    assert r.probability == 0.0 and r.stop, r
    # the sweep's best at the bound still cannot be beaten by another run
    assert sweep_rule(x, [0.3, 0.5, 0.6, 0.62, 0.63, 0.63], 50, best=1.0, bounds=(0, 1)).stop


# --- E3: the band's misses are not one-sided on steady rises ------------------------------


def recorded(name: str) -> tuple[list[np.ndarray], str, int]:
    data = json.loads((DATA / f"{name}_curves.json").read_text())
    b = int(data["epoch_budget"])
    monitor = data.get("monitor", "val_acc")
    curves = [np.asarray(r[monitor][:b], dtype=float) for r in data["runs"]]
    return [c for c in curves if len(c) == b], data.get("mode", "max"), b


@pytest.mark.parametrize("frac", (0.25, 0.5))
def test_e3_truth_above_the_band_at_most_10_percent_plus_noise(frac):
    """Recorded real curves (x = validation index), default forecaster (the PFN; the
    averaged forecast put the truth above its band for 19% of bbc_tfidf curves seen 25%):
    per task, the final value lies on the good side of the 80% band for at most 10% of
    curves plus two binomial standard errors."""
    from eecontrol.core.curves.forecasters import get_forecaster

    fc_fn = get_forecaster(default_forecaster())
    for name in ("bbc_tfidf", "breast_cancer", "concrete", "digits"):
        curves, mode, b = recorded(name)
        assert len(curves) >= 40
        bounds = (0.0, 1.0) if mode == "max" else None
        x = np.arange(1, b + 1, dtype=float)
        n = max(fc_fn.min_points, math.ceil(frac * b))
        better = 0
        for c in curves:
            lo, hi = fc_fn(x[:n], c[:n], float(b), mode=mode, bounds=bounds).band(0.8)
            better += bool(c[-1] > hi[0]) if mode == "max" else bool(c[-1] < lo[0])
        rate = better / len(curves)
        assert rate <= 0.10 + 2 * math.sqrt(0.09 / len(curves)), (name, frac, rate)


# --- E4: no blindness for the first points ------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_e4_blind_below_the_forecasters_points_is_said_and_others_decide(seed):
    y = noisy([0.2, 0.5, 0.62, 0.7, 0.74, 0.77], seed, 0.005)
    x = np.arange(1, 7, dtype=float)
    for n in (1, 2, 3):  # the calibrated average needs 4 points: it says it is blind
        r = convergence_rule(x[:n], y[:n], 30, min_points=1, bounds=(0, 1), forecaster="forecast")
        assert r.decision == "no_decision" and "blind: n < 4" in r.reason, r
        assert r.n_points == n
        r = sweep_rule(x[:n], y[:n], 30, 0.9, min_points=1, bounds=(0, 1), forecaster="forecast")
        assert "blind: n < 4" in r.reason, r
    # a forecaster that needs fewer points decides from them (the ensemble: 3)
    r = convergence_rule(x[:3], y[:3], 30, min_points=1, bounds=(0, 1), forecaster="ensemble")
    assert r.decision in ("stop", "continue") and r.predicted_final is not None, r
    r = sweep_rule(x[:3], y[:3], 30, 0.99, min_points=1, bounds=(0, 1), forecaster="ensemble")
    assert r.decision in ("stop", "continue") and r.probability is not None, r
    # from 4 points the calibrated average decides; the default forecaster from its own minimum
    r = convergence_rule(x[:4], y[:4], 30, min_points=1, bounds=(0, 1), forecaster="forecast")
    assert r.decision in ("stop", "continue"), r
    from eecontrol.core.curves.forecasters import get_forecaster

    k = get_forecaster(default_forecaster()).min_points
    r = convergence_rule(x[:k], y[:k], 30, min_points=1, bounds=(0, 1))
    assert r.decision in ("stop", "continue") and r.forecaster == default_forecaster(), r


# --- E5: a plateau-then-rise run is not stopped on its plateau ----------------------------


def plateau_then_rise() -> np.ndarray:
    """The recorded bbc_tfidf run 15 (plateau at 0.458 from epoch 7, then a rise to 0.964),
    its plateau lengthened by its own epochs 7-16 repeated: flat to epoch 26 of 60."""
    data = json.loads((DATA / "bbc_tfidf_curves.json").read_text())
    c = np.asarray(next(r for r in data["runs"] if r["id"] == 15)["val_acc"][:50], dtype=float)
    return np.concatenate([c[:16], c[6:16], c[16:]])


def test_e5_a_plateau_then_rise_is_not_stopped_on_the_plateau():
    """Seeds 0-4 of noise 0.003 on the curve: no stop before epoch 40 in any of them (the
    averaged forecast stopped it at epoch 21-25 in 4 of 5 seeds; the default, the PFN,
    has learned that plateaus may rise)."""
    base = plateau_then_rise()
    assert len(base) == 60 and np.ptp(base[6:26]) < 0.01 and base.max() > 0.96
    x = np.arange(1, 61, dtype=float)
    forecaster = default_forecaster()
    stops = {}
    for seed in SEEDS:
        y = noisy(base, seed, 0.003)
        for n in range(5, 40):  # the rise is under way by epoch 35 (0.8)
            r = convergence_rule(x[:n], y[:n], 60, bounds=(0, 1), forecaster=forecaster)
            if r.stop:
                stops[seed] = (n, round(float(y[:n].max()), 3), r.reason)
                break
    assert not stops, stops
