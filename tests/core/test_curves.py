"""Curve families, the ensemble's band, the cross-run predictor and both stopping rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eecontrol.core.curves import (
    FAMILIES,
    CrossRunPrediction,
    CrossRunPredictor,
    FinishedRun,
    cross_run_rule,
    curve_features,
    fit_curve,
    fit_family,
    in_run_rule,
)

# True parameters on the gain scale (x from 1, values around [0, 2]); each gives a curve
# whose curvature is visible on x = 1..40, so every parameter is identifiable.
TRUE = {
    "vapor_pressure": (0.7, -0.8, 0.02),
    "pow3": (2.0, 1.2, 0.7),
    "log_log_linear": (0.8, 1.5),
    "hill3": (2.0, 1.5, 4.0),
    "log_power": (2.0, 1.2, -1.4),
    "pow4": (2.0, 0.5, 1.0, 0.8),
    "mmf": (1.8, 0.5, 0.2, 1.5),
    "exp4": (1.9, 0.3, 0.5, 0.7),
    "janoschek": (1.8, 0.4, 0.08, 1.2),
    "weibull": (1.8, 0.4, 0.12, 1.3),
    "ilog2": (2.0, 1.5),
}


def test_every_family_is_tested():
    assert set(TRUE) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(TRUE))
def test_family_recovers_its_own_parameters(name):
    x = np.arange(1, 41, dtype=float)
    y = FAMILIES[name](x, TRUE[name])
    fit = fit_family(name, x, y)
    assert fit is not None
    np.testing.assert_allclose(fit.params, TRUE[name], rtol=1e-3, atol=1e-6)
    assert fit.rss < 1e-10


def _simulated(rng: np.random.Generator, n: int = 40, noise: float = 0.01):
    """An accuracy-like curve from one of four shapes, with Gaussian noise."""
    x = np.arange(1, n + 1, dtype=float)
    k = rng.integers(4)
    if k == 0:
        m = 0.95 - 0.5 * x ** (-rng.uniform(0.4, 1.2))
    elif k == 1:
        m = 0.95 - 0.6 / (1 + (rng.uniform(0.1, 0.4) * x) ** rng.uniform(1, 2))
    elif k == 2:
        m = 0.95 - 0.6 * np.exp(-rng.uniform(0.05, 0.3) * x ** rng.uniform(0.7, 1.1))
    else:
        m = 0.9 - 0.5 * np.exp(-((rng.uniform(0.05, 0.2) * x) ** rng.uniform(0.8, 1.5)))
    return x, m + rng.normal(0.0, noise, n)


def test_band_covers_held_back_points_at_least_at_the_nominal_rate():
    """80% band from the first half of 16 noisy curves, on the held-back second half.

    Since the bootstrap draws are centred on each family's fit (issue 16: off-centre draws
    stopped a rising run), the ensemble's band is conservative on these simulated curves
    (0.88); the calibrated band is :func:`forecast`'s (tests/core/test_curves_forecast.py).
    """
    rng = np.random.default_rng(0)
    inside, total = 0, 0
    for i in range(16):
        x, y = _simulated(rng)
        fit = fit_curve(x[:20], y[:20], mode="max", seed=i)
        assert fit.ok, fit.reason
        lo, hi = fit.predict(x[20:], quantiles=(0.1, 0.9)).band(0.8)
        inside += int(np.sum((y[20:] >= lo) & (y[20:] <= hi)))
        total += 20
    coverage = inside / total
    se = math.sqrt(0.8 * 0.2 / total)  # binomial SE; points of one curve correlate, so 3 SE
    assert 0.8 - 3 * se < coverage < 0.95, f"coverage {coverage:.3f} (SE {se:.3f})"


def test_minimising_mirrors_maximising():
    rng = np.random.default_rng(3)
    x, y = _simulated(rng)
    up = fit_curve(x[:15], y[:15], mode="max", n_bootstrap=30)
    down = fit_curve(x[:15], 1.0 - y[:15], mode="min", n_bootstrap=30)
    p_up = up.predict([40.0], quantiles=(0.1, 0.9))
    p_down = down.predict([40.0], quantiles=(0.1, 0.9))
    np.testing.assert_allclose(p_down.mean, 1.0 - p_up.mean, atol=1e-5)
    np.testing.assert_allclose(p_down.quantiles[0.1], 1.0 - p_up.quantiles[0.9], atol=1e-5)


@pytest.mark.parametrize(
    ("y", "reason"),
    [
        ([], "0 point"),
        ([0.5], "1 point"),
        ([0.5, 0.6], "2 point"),
        ([0.5] * 8, "constant"),
        ([0.1, 0.2, float("nan"), 0.4, 0.5, 0.6], "non-finite"),
        ([0.1, 0.2, float("inf"), 0.4, 0.5, 0.6], "non-finite"),
    ],
)
def test_degenerate_curves_give_no_decision_with_a_reason(y, reason):
    x = np.arange(1, len(y) + 1, dtype=float)
    fit = fit_curve(x, y)
    assert not fit.ok and reason in fit.reason
    result = in_run_rule(x, y, horizon=100, min_points=3)
    assert result.decision == "no_decision" and result.reason
    assert not result.stop


def test_pure_noise_gives_no_decision():
    rng = np.random.default_rng(1)
    y = 0.5 + rng.normal(0, 0.02, 15)
    result = in_run_rule(np.arange(1.0, 16.0), y, horizon=50, n_bootstrap=20)
    assert result.decision == "no_decision" and "R^2" in result.reason


def _saturating(n: int, rate: float = 0.5, top: float = 0.9, noise: float = 0.003, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.arange(1, n + 1, dtype=float)
    return x, top - 0.6 * np.exp(-rate * x) + rng.normal(0, noise, n)


@pytest.mark.parametrize(
    ("curve", "horizon", "kwargs", "decision"),
    [
        # flattened long ago: no chance to beat its best before the end
        (_saturating(20, rate=0.5), 60, {"min_delta": 0.01}, "stop"),
        # still rising steeply, far from the end
        (_saturating(8, rate=0.05), 60, {"min_delta": 0.01}, "continue"),
        # warm-up
        (_saturating(4, rate=0.5), 60, {"min_points": 5}, "no_decision"),
        # no training left
        (_saturating(20, rate=0.5), 20, {}, "no_decision"),
    ],
)
def test_in_run_rule_on_scripted_curves(curve, horizon, kwargs, decision):
    x, y = curve
    result = in_run_rule(x, y, horizon, mode="max", n_bootstrap=50, **kwargs)
    assert result.decision == decision, result
    if decision != "no_decision":
        assert 0.0 <= result.probability <= 1.0
        assert result.lower <= result.predicted_final <= result.upper
        assert result.evidence()["in_run_probability"] == result.probability


def test_in_run_rule_on_a_loss_curve():
    x, y = _saturating(20, rate=0.5)
    loss = 2.0 - y
    result = in_run_rule(x, loss, 60, mode="min", min_delta=0.01, n_bootstrap=50)
    assert result.stop and result.best == pytest.approx(loss.min())


def test_bounds_clip_the_band_to_the_metric_range():
    """A short, noisy accuracy curve: unclipped, its mean and band leave [0, 1]."""
    x = np.arange(1, 6, dtype=float)
    y = np.array([0.4, 0.8, 0.85, 0.97, 0.96])
    free = fit_curve(x, y, mode="max", seed=0).predict([60.0], quantiles=(0.1, 0.5, 0.9))
    bounded = fit_curve(x, y, mode="max", seed=0, bounds=(0.0, 1.0))
    pred = bounded.predict([60.0], quantiles=(0.1, 0.5, 0.9))
    assert free.quantiles[0.9][0] > 1.0 and free.mean[0] > 1.0  # the case bounds are for
    assert 0.0 <= pred.quantiles[0.1][0] <= pred.quantiles[0.9][0] <= 1.0
    assert 0.0 <= pred.mean[0] <= 1.0
    paths, _ = bounded.sample_paths(np.linspace(7, 60, 10))
    assert bounded.from_gain(paths).max() <= 1.0 + 1e-12
    # a loss in [0, inf): mirrored, the lower side is clipped at 0
    loss = fit_curve(x, 1.0 - y, mode="min", seed=0, bounds=(0.0, math.inf))
    assert loss.predict([60.0], quantiles=(0.1, 0.9)).quantiles[0.1][0] >= 0.0


def test_in_run_rule_stops_a_run_whose_best_is_at_the_bound():
    x = np.arange(1, 9, dtype=float)
    y = np.array([0.5, 0.8, 0.9, 0.95, 0.97, 1.0, 0.99, 0.98])
    free = in_run_rule(x, y, 50, mode="max", n_bootstrap=50)
    bounded = in_run_rule(x, y, 50, mode="max", n_bootstrap=50, bounds=(0, 1))
    assert bounded.stop and bounded.probability == 0.0
    assert bounded.upper <= 1.0
    assert free.upper > 1.0  # unbounded, the band claims accuracies above 1


def _runs(n: int, tau_total: int = 20, seed: int = 0) -> list[FinishedRun]:
    """Finished runs: the asymptote depends on log10(lr) (best near 1e-3)."""
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(n):
        lr = 10 ** rng.uniform(-4.5, -1.5)
        top = 0.95 - 0.15 * (math.log10(lr) + 3) ** 2
        x = np.arange(1, tau_total + 1)
        values = top - (top - 0.1) * np.exp(-0.25 * x) + rng.normal(0, 0.005, tau_total)
        runs.append(FinishedRun(values.tolist(), {"lr": lr}))
    return runs


def test_curve_features_are_values_and_differences():
    f = curve_features([1.0, 2.0, 4.0, 7.0], tau=4)
    np.testing.assert_allclose(f, [1, 2, 4, 7, 1, 2, 3, 1, 1])


def test_cross_run_predictor_predicts_held_out_results():
    runs = _runs(40)
    train, test = runs[:30], runs[30:]
    model = CrossRunPredictor(tau=5, mode="max").fit(train)
    pred = np.array([model.predict(r.values[:5], r.hparams).mean for r in test])
    truth = np.array([r.result_in("max") for r in test])
    r2 = 1 - np.sum((pred - truth) ** 2) / np.sum((truth - truth.mean()) ** 2)
    assert r2 > 0.8, r2
    assert 0 < model.sigma < 0.1


def test_bounded_probability_of_beating_the_best_by_hand():
    from scipy.stats import norm

    pred = CrossRunPrediction(mean=0.97, sigma=0.02, n_train=10, tau=5, hparams=())
    # unbounded: P(R > 0.98) = sf(0.5)
    assert pred.prob_beats(0.98) == pytest.approx(norm.sf(0.5))
    # an accuracy cannot pass 1, but mass above 1 is a result at 1, which beats 0.98
    assert pred.prob_beats(0.98, bounds=(0, 1)) == pytest.approx(norm.sf(0.5))
    assert pred.prob_beats(1.0, bounds=(0, 1)) == 0.0  # the bound cannot be beaten
    # minimising a loss bounded below by 0: P(R < 0.02), mass below 0 included
    loss = CrossRunPrediction(mean=0.01, sigma=0.02, n_train=10, tau=5, hparams=())
    expected = norm.cdf(0.5)
    assert loss.prob_beats(0.02, mode="min", bounds=(0, math.inf)) == pytest.approx(expected)
    assert loss.prob_beats(0.0, mode="min", bounds=(0, math.inf)) == 0.0


def test_cross_run_rule_on_scripted_curves():
    finished = _runs(12, seed=1)
    best = max(r.result_in("max") for r in finished)
    x = np.arange(1, 6)
    bad = (0.3 - 0.2 * np.exp(-0.25 * x)).tolist()
    result = cross_run_rule(bad, finished, {"lr": 1e-5}, delta=0.05, min_points=5, min_finished=5)
    assert result.stop and result.best == pytest.approx(best)
    assert result.probability < 0.05 and result.predicted_final < best
    good = finished[int(np.argmax([r.result_in("max") for r in finished]))]
    result = cross_run_rule(good.values[:5], finished, good.hparams, min_points=5, min_finished=5)
    assert result.decision == "continue", result
    assert cross_run_rule(bad, finished[:3], min_points=5).decision == "no_decision"
    assert cross_run_rule(bad[:2], finished, min_points=5).decision == "no_decision"
    assert cross_run_rule([0.1, float("nan"), 0.2], finished, min_points=3).decision == (
        "no_decision"
    )
    # minimising a loss: the same decision
    loss_runs = [FinishedRun([1 - v for v in r.values], r.hparams) for r in finished]
    result = cross_run_rule([1 - v for v in bad], loss_runs, {"lr": 1e-5}, mode="min", min_points=5)
    assert result.stop


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: in_run_rule([1, 2, 3], [1, 2, 3], 10, threshold=0.0), "`threshold`"),
        (lambda: in_run_rule([1, 2, 3], [1, 2, 3], 10, band=1.0), "`band`"),
        (lambda: in_run_rule([1, 2, 3], [1, 2, 3], 10, min_delta=-1), "`min_delta`"),
        (lambda: in_run_rule([1, 2, 3], [1, 2, 3], 10, min_points=2), "`min_points`"),
        # once passed silently: an infinite or fractional warm-up, a bool or None min_delta
        (lambda: in_run_rule([1, 2, 3], [1, 2, 3], 10, min_points=math.inf), "[3, inf)"),
        (lambda: in_run_rule([1, 2, 3], [1, 2, 3], 10, min_points=4.5), "`min_points`"),
        (lambda: in_run_rule([1, 2, 3], [1, 2, 3], 10, min_delta=True), "`min_delta`"),
        (lambda: in_run_rule([1, 2, 3], [1, 2, 3], 10, min_delta=None), "[0.0, inf), got None"),
        (lambda: fit_curve([1, 2, 3], [1, 2, 3], mode="up"), "`mode`"),
        (lambda: fit_curve([1, 1, 3], [1, 2, 3]), "`x` must be strictly increasing"),
        (lambda: fit_curve([0, 1, 3], [1, 2, 3]), "`x` must be finite and in (0, inf)"),
        (lambda: fit_curve([1, 2], [1, 2, 3]), "same length"),
        (lambda: fit_curve([1, 2, 3], [1, 2, 3], families=["sigmoid"]), "`families`"),
        (lambda: cross_run_rule([1, 2, 3], [], delta=1.5), "`delta`"),
        (lambda: cross_run_rule([1, 2, 3], [], min_finished=1), "`min_finished`"),
        (lambda: CrossRunPredictor(tau=0), "`tau`"),
        (lambda: CrossRunPredictor(tau=3, target="final"), "`target`"),
        (lambda: fit_curve([1, 2, 3], [0.1, 0.2, 0.3], bounds=[1, 0]), "`bounds`"),
        (lambda: fit_curve([1, 2, 3], [0.1, 0.2, 0.3], bounds=[0]), "`bounds`"),
        (lambda: fit_curve([1, 2, 3], [0.1, 0.2, 1.3], bounds=[0, 1]), "leave `bounds`"),
    ],
)
def test_invalid_arguments_name_the_argument(call, message):
    with pytest.raises(ValueError, match=None) as err:
        call()
    assert message in str(err.value)
