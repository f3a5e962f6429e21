"""The PFN curve forecaster: shipped weights, its distribution's contract, the prior and a
tiny training run (issue 24)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eecontrol.core.curves import pfn
from eecontrol.core.curves.pfn import WEIGHTS_FILE, forecast, load_model
from eecontrol.core.curves.prior import PriorConfig, Recorded, sample_curves
from eecontrol.core.curves.train_pfn import TINY, TrainConfig, main, train

X = np.arange(1.0, 14.0)
Y = np.array([0.31, 0.45, 0.52, 0.6, 0.63, 0.66, 0.7, 0.69, 0.72, 0.74, 0.73, 0.75, 0.76])


def test_shipped_weights_load_with_weights_only() -> None:
    assert WEIGHTS_FILE.is_file(), "the shipped weights are missing"
    blob = torch.load(WEIGHTS_FILE, weights_only=True)
    assert set(blob) >= {"config", "state_dict"}
    assert WEIGHTS_FILE.stat().st_size <= 20 * 2**20
    meta = json.loads(WEIGHTS_FILE.with_suffix(".json").read_text())
    assert meta["config"]["seed"] == 0 and meta["config"]["steps"] >= 1000 and meta["seconds"] > 0
    # the band's spread chosen by benchmarks/curves_pfn.py --write-shipped travels with it
    assert load_model().spread == pytest.approx(meta["shipped"]["choice"]["spread"])
    assert float(blob["spread"]) == load_model().spread


def test_distribution_contract() -> None:
    at = [20.0, 50.0, 100.0]
    f = forecast(X, Y, at, mode="max", bounds=(0.0, 1.0))
    assert f.median.shape == f.mean.shape == (3,)
    qs = np.array([f.quantile(q) for q in np.linspace(0.01, 0.99, 25)])
    assert np.all(np.isfinite(qs))
    assert np.all(np.diff(qs, axis=0) >= -1e-12), "quantiles must increase with q"
    assert np.all(qs[-1] - qs[0] > 0), "the distribution has width"
    lo, hi = f.band(0.8)
    assert np.all(lo <= f.median) and np.all(f.median <= hi)
    assert np.all(lo <= f.mean) and np.all(f.mean <= hi)
    assert np.all(lo >= 0.0) and np.all(hi <= 1.0)
    # prob_beats inverts the quantile function (no bound to clip the quantiles)
    free = forecast(X, Y, at)
    for q in (0.2, 0.5, 0.8):
        assert free.prob_beats(float(free.quantile(q)[1]))[1] == pytest.approx(1 - q, abs=0.02)
    assert np.all(f.prob_beats(1.0) == 0.0), "a threshold at the bound cannot be beaten"


def test_bounds_clip_every_value() -> None:
    y = np.linspace(0.5, 0.995, 13)  # heading past the bound
    f = forecast(X, y, 100.0, bounds=(0.0, 1.0))
    free = forecast(X, y, 100.0)
    assert free.quantile(0.95)[0] > 1.0, "without bounds the forecast passes 1"
    assert f.quantile(0.95)[0] <= 1.0 and f.mean[0] <= 1.0 and f.band(0.8)[1][0] <= 1.0


def test_min_mirrors_max() -> None:
    f = forecast(X, Y, [30.0, 60.0], mode="max")
    g = forecast(X, -Y, [30.0, 60.0], mode="min")
    np.testing.assert_allclose(g.mean, -f.mean, atol=1e-9)
    np.testing.assert_allclose(g.median, -f.median, atol=1e-9)
    for q in (0.1, 0.5, 0.9):
        np.testing.assert_allclose(g.quantile(q), -f.quantile(1 - q), atol=1e-9)
    np.testing.assert_allclose(g.prob_beats(-0.8), f.prob_beats(0.8), atol=1e-9)


def test_unit_free() -> None:
    f = forecast(X, Y, 50.0)
    g = forecast(X * 84.0, 2.0 * Y + 3.0, 50.0 * 84.0)  # steps instead of epochs, y affine
    assert f.median[0] != pytest.approx(Y[-1], abs=1e-3), "a forecast that moves"
    np.testing.assert_allclose(g.median, 2.0 * f.median + 3.0, rtol=1e-4)
    np.testing.assert_allclose(g.quantile(0.1), 2.0 * f.quantile(0.1) + 3.0, rtol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_one_or_few_points(n: int) -> None:
    f = forecast(X[:n], Y[:n], 50.0, bounds=(0.0, 1.0))
    lo, hi = f.band(0.8)
    assert np.isfinite(f.median[0]) and hi[0] > lo[0]
    assert 0.0 <= lo[0] <= f.median[0] <= hi[0] <= 1.0


def test_deterministic_across_calls() -> None:
    a = forecast(X, Y, [20.0, 50.0])
    np.testing.assert_array_equal(a.probs, forecast(X, Y, [20.0, 50.0]).probs)
    # each query is forecast on its own: asking for more positions changes none
    alone = forecast(X, Y, [50.0])
    np.testing.assert_allclose(a.probs[1], alone.probs[0], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": [], "y": []}, "at least 1 point"),
        ({"y": np.where(np.arange(13) == 4, np.nan, Y)}, "finite"),
        ({"x": np.r_[X[:5], X[4], X[6:]]}, "strictly increasing"),
        ({"x": X - 1.0}, "positive"),
        ({"at": 5.0}, "`at` must be >="),
        ({"mode": "up"}, "`mode`"),
        ({"spread": 0.0}, "`spread`"),
        ({"spread": float("nan")}, "`spread`"),
        ({"y": Y[:5]}, "one length"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {"x": X, "y": Y, "at": 50.0} | kwargs
    with pytest.raises(ValueError, match=match):
        forecast(**args)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train_pfn"):
        forecast(X, Y, 50.0, weights=tmp_path / "none.pt")


def _normalised_errors(seed: int, n_obs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out prior curves (a seed training never used): |error| / observed range."""
    rng = np.random.default_rng(seed)
    x, g = sample_curves(rng, 150, 50, PriorConfig())
    err_pfn, err_last, hit = [], [], []
    for xi, gi in zip(x, g):
        f = forecast(xi[:n_obs], gi[:n_obs], xi[-1], spread=1.0)
        s = max(np.ptp(gi[:n_obs]), 1e-9)
        err_pfn.append(abs(f.median[0] - gi[-1]) / s)
        err_last.append(abs(gi[n_obs - 1] - gi[-1]) / s)
        lo, hi = f.band(0.8)
        hit.append(lo[0] <= gi[-1] <= hi[0])
    return np.array(err_pfn), np.array(err_last), np.array(hit)


def test_shipped_model_beats_last_value_and_is_calibrated_on_its_prior() -> None:
    e_pfn, e_last, hit = _normalised_errors(seed=987_654, n_obs=13)
    assert np.median(e_pfn) < 0.8 * np.median(e_last)
    assert 0.7 <= hit.mean() <= 0.92


def test_prior_batches() -> None:
    rng = np.random.default_rng(0)
    x, g = sample_curves(rng, 64, 30, PriorConfig(geometric=0.5))
    assert x.shape == g.shape == (64, 30)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(g))
    assert np.all(x > 0) and np.all(np.diff(x, axis=1) > 0)
    _x2, g2 = sample_curves(np.random.default_rng(0), 64, 30, PriorConfig(geometric=0.5))
    np.testing.assert_array_equal(g, g2)
    assert np.mean(g[:, -1] > g[:, 0]) > 0.6, "curves mostly rise (larger is better)"
    with pytest.raises(ValueError, match="`decline`"):
        PriorConfig(decline=1.5)


def test_recorded_curves_leave_one_task_out() -> None:
    t = np.linspace(0, 1, 40)
    rec = Recorded([np.tile([0.0, 1.0], 20), 3 * t], ["wavy", "line"])
    assert rec.without("wavy").tasks == ["line"]
    cfg = PriorConfig(recorded_share=1.0)

    def curvature(data: Recorded) -> float:
        _, g = sample_curves(np.random.default_rng(1), 16, 20, cfg, data)
        return float(np.median(np.abs(np.diff(g, n=2)) / np.ptp(g, axis=1, keepdims=True)))

    assert curvature(rec.without("wavy")) < 0.5 * curvature(rec.without("line"))


def test_tiny_training_run_produces_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "pfn.pt"
    main(["--tiny", "--out", str(out)])
    assert out.is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["steps"] == TINY["steps"] and meta["config"]["seed"] == 0
    assert meta["final_loss"] < meta["first_loss"], "training lowered the loss"
    torch.load(out, weights_only=True)
    f = forecast(X, Y, 50.0, weights=out)
    assert np.isfinite(f.median[0])
    assert load_model(out).config["emsize"] == TINY["emsize"]


def test_tiny_training_with_recorded_curves_leaves_the_task_out(tmp_path: Path) -> None:
    """``--recorded`` mixes the recorded sweeps in; ``--leave-out`` keeps a task unseen."""
    data = Path(__file__).resolve().parents[2] / "benchmarks/data"
    out = tmp_path / "pfn.pt"
    main(["--tiny", "--variant", "recorded", "--recorded", str(data), "--leave-out", "fortunes",
          "--out", str(out)])  # fmt: skip
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["prior"]["recorded_share"] == 0.3
    assert meta["recorded_curves"] > 100 and "concrete" in meta["recorded_tasks"]
    assert "fortunes" not in meta["recorded_tasks"] and meta["left_out"] == ["fortunes"]
    assert np.isfinite(forecast(X, Y, 50.0, weights=out).median[0])
    with pytest.raises(ValueError, match=r"--leave-out.*unknown task.*'nope'"):
        main(["--tiny", "--variant", "recorded", "--recorded", str(data), "--leave-out", "nope",
              "--out", str(out)])  # fmt: skip
    every = sorted(set(meta["recorded_tasks"]) | {"fortunes"})
    with pytest.raises(ValueError, match="left no recorded curve"):
        main(["--tiny", "--variant", "recorded", "--recorded", str(data), "--leave-out", *every,
              "--out", str(out)])  # fmt: skip
    with pytest.raises(ValueError, match="pass `--recorded DIR`"):
        main(["--tiny", "--variant", "recorded", "--out", str(out)])
    with pytest.raises(ValueError, match="need a variant with recorded curves"):
        main(["--tiny", "--recorded", str(data), "--out", str(out)])
    with pytest.raises(ValueError, match=r"no \*_curves\.json file"):
        main(["--tiny", "--variant", "recorded", "--recorded", str(tmp_path), "--out", str(out)])


def test_training_is_seeded() -> None:
    cfg = TrainConfig(steps=3, batch=8, max_len=12, emsize=16, layers=1, buckets=16)
    a, _ = train(cfg, log_every=0)
    b, _ = train(cfg, log_every=0)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert pfn.CurvePFN is type(a)


def test_robust_normalisation_ignores_a_sentinel_validation() -> None:
    g = torch.tensor([[-0.9, -0.8, -1000.0, -0.7, -0.65, -0.6]], dtype=torch.float64)
    centre, plain = pfn.normalise(g)
    _, robust = pfn.normalise(g, robust=True)
    assert float(centre[0]) == -0.6
    assert float(plain[0]) == pytest.approx(999.4)
    assert float(robust[0]) == pytest.approx(0.3)  # -0.9 .. -0.6, the 1e3 left out
    clean = g[:, [0, 1, 3, 4, 5]]
    assert float(pfn.normalise(clean, robust=True)[1][0]) == float(pfn.normalise(clean)[1][0])


def test_the_rules_stop_probabilities_with_the_pfn_are_the_recorded_choice():
    """The PFN's rule defaults (convergence threshold, sweep delta, halving quantile) are
    the values ``benchmarks/curves_pfn_rules.py`` chose leave-one-task-out among those that
    keep the rules' guarantees, as its JSON records; the averaged forecast keeps 5%."""
    from eecontrol.core.curves.forecasters import DEFAULT_FORECASTER, get_forecaster

    path = Path(__file__).resolve().parents[2] / "benchmarks/results/curves_pfn_rules.json"
    result = json.loads(path.read_text())
    assert len(result["loto"]["convergence"]) == 10  # every recorded task held out once
    assert DEFAULT_FORECASTER == "pfn"
    rules = get_forecaster("pfn").rules
    for rule, value in (
        ("convergence", rules.threshold),
        ("sweep", rules.delta),
        ("halving", rules.quantile),
    ):
        assert result["allowed"][rule], rule  # the guarantees left a value to choose
        assert value == result["shipped"][rule] and value in result["allowed"][rule], rule
    old = get_forecaster("forecast").rules
    assert (old.threshold, old.delta, old.quantile) == (0.05, 0.05, 0.5)


def test_the_shipped_weights_are_the_leave_one_task_out_records_choice() -> None:
    """The shipped PFN (weights and band spread) is the candidate that
    ``benchmarks/curves_pfn.py`` chose on all 10 recorded tasks, among candidates that
    differ in prior, model size, seed and recorded-curve mixing, each task's held-out
    choice made on the other 9 (``benchmarks/results/curves_pfn_loto.json``)."""
    root = Path(__file__).resolve().parents[2]
    result = json.loads((root / "benchmarks/results/curves_pfn_loto.json").read_text())
    configs = result["model_configs"]
    assert len({json.dumps(c["prior"], sort_keys=True) for c in configs.values()}) >= 3
    assert len({(c["emsize"], c["layers"]) for c in configs.values()}) >= 2
    assert len({c["seed"] for c in configs.values()}) >= 2
    assert any(c["prior"]["recorded_share"] > 0 for c in configs.values())
    assert any("{task}" in (path or "") for path in result["models"].values())
    assert len(result["held_out"]) == 10
    for task, held in result["held_out"].items():
        assert task not in held["chosen_on"] and len(held["chosen_on"]) == 9, task
        assert held["choice"]["variant"] in configs, task
    choice = result["summary"]["shipped_choice_on_all_tasks_in_sample"]
    meta = json.loads(pfn.WEIGHTS_FILE.with_suffix(".json").read_text())
    assert meta["config"] == configs[choice["variant"]]
    assert meta["shipped"]["choice"] == choice
    assert load_model().spread == choice["spread"]
