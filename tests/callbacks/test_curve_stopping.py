"""LearningCurveStopping in real (tiny) fits: stops, evidence, errors, store, resume."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from eecontrol.callbacks.curve_stopping import PREDICTION_FILE, LearningCurveStopping
from eecontrol.core.curves.forecasters import PFN_THRESHOLD
from eecontrol.sweep.store import CurveStore
from eecontrol.testing import check_callback_conformance
from tests.conftest import make_trainer


def plateau(n: int = 20) -> list[float]:
    """A validation score that saturated early (tiny deterministic wiggle)."""
    return [0.9 - 0.6 * math.exp(-0.6 * i) + 0.002 * ((-1) ** i) for i in range(1, n + 1)]


class ScriptedCore(pl.LightningModule):
    """Trains a tiny layer; its validation logs ``values[epoch]`` as ``key`` (no loaders)."""

    def __init__(self, values: list[float], key: str = "val/score", lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["values", "key"])
        self.values, self.key = list(values), key
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        if self.key:
            self.log(self.key, self.values[self.current_epoch], on_epoch=True, batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Scripted(ScriptedCore):
    """:class:`ScriptedCore` with its own loaders."""

    def _loader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()


def fit(tmp_path, cb, values, max_epochs, **kwargs):
    trainer = make_trainer(tmp_path, max_epochs=max_epochs, callbacks=[cb], **kwargs)
    trainer.fit(Scripted(values, **kwargs.pop("module_kwargs", {})))
    return trainer


def test_conformance(tmp_path):
    cb = LearningCurveStopping("val/score", "max", min_points=3, n_bootstrap=10)
    fit(tmp_path, cb, plateau(), 4)
    check_callback_conformance(
        LearningCurveStopping,
        valid=[{"monitor": "val/acc", "mode": "max"}, {"monitor": "val/loss", "mode": "min"}],
        invalid=[
            ({"monitor": ""}, "`monitor`", "non-empty"),
            ({"mode": "up"}, "`mode`", "['max', 'min']"),
            ({"x_axis": "epoch"}, "`x_axis`", "['step', 'check']"),
            ({"min_delta": -0.1}, "`min_delta`", "[0.0, inf)"),
            ({"rule": "median"}, "`rule`", "['convergence', 'sweep', 'ensemble']"),
            ({"rule": "sweep"}, "`rule`", "needs `store`"),
            ({"threshold": 0.0}, "`threshold`", "(0.0, 1.0)"),
            ({"threshold": float("nan")}, "`threshold`", "(0.0, 1.0)"),
            ({"min_points": 0}, "`min_points`", "[1, inf)"),
            ({"min_points": 4.5}, "`min_points`", "[1, inf)"),
            ({"forecaster": "lcpfn"}, "`forecaster`", "['forecast', 'ensemble', 'pfn']"),
            ({"warmup": 1.0}, "`warmup`", "[0.0, 1.0)"),
            ({"band": 1.0}, "`band`", "(0.0, 1.0)"),
            ({"min_r2": 1.5}, "`min_r2`", "[0.0, 1.0]"),
            ({"horizon": 0}, "`horizon`", "(0.0, inf)"),
            ({"delta": 1.0}, "`delta`", "(0.0, 1.0)"),
            ({"min_finished": 1}, "`min_finished`", "[2, inf)"),
            ({"n_bootstrap": 0}, "`n_bootstrap`", "[1, inf)"),
            ({"seed": -1}, "`seed`", "[0, inf)"),
            ({"hparams": [1, 2]}, "`hparams`", "mapping"),
        ],
        after_fit=(cb, {"monitor": "val/score", "mode": "max", "min_points": 3, "n_bootstrap": 10}),
    )


@pytest.mark.parametrize(
    ("rule", "prefix", "forecaster", "threshold"),
    [
        ("convergence", "convergence", "forecast", 0.05),
        # the default forecaster (the PFN) with its own stop probability
        ("convergence", "convergence", None, PFN_THRESHOLD),
        ("ensemble", "in_run", None, 0.05),
    ],
)
def test_stops_a_flat_curve_with_evidence_and_logs_the_prediction(
    tmp_path, rule, prefix, forecaster, threshold
):
    named = {} if forecaster is None else {"forecaster": forecaster}
    cb = LearningCurveStopping(
        "val/score",
        "max",
        min_delta=0.01,
        min_points=6,
        n_bootstrap=30,
        x_axis="check",
        rule=rule,
        **named,
    )
    trainer = fit(tmp_path, cb, plateau(), 20, num_sanity_val_steps=2)
    assert cb.stopped_epoch is not None and cb.stopped_epoch < 19
    assert cb.stop_reason.startswith(f"{prefix.replace('_', '-')} rule")
    stop = next(d for d in cb.decisions if d.action == "stop")
    ev = stop.evidence
    assert ev[f"{prefix}_probability"] < threshold
    assert f"< threshold {threshold:g}" in cb.stop_reason
    assert ev[f"{prefix}_lower"] <= ev[f"{prefix}_predicted_final"] <= ev[f"{prefix}_upper"]
    assert cb.best_so_far == pytest.approx(max(cb.history["value"]))
    # the sanity check is not part of the curve; x is the validation index
    assert cb.history["check"] == list(range(1, len(cb.history["value"]) + 1))
    assert cb.history["value"] == pytest.approx(plateau()[: len(cb.history["value"])])
    for key in ("curve/predicted_final", "curve/lower", "curve/upper", "curve/p_improve"):
        assert key in trainer.callback_metrics
    record = json.loads((tmp_path / PREDICTION_FILE).read_text())
    assert record["predicted"]["x"][-1] == pytest.approx(20.0)
    assert len(record["observed"]["y"]) == len(cb.history["value"])


def test_a_rising_curve_is_not_stopped(tmp_path):
    rising = [0.1 + 0.04 * i for i in range(12)]
    cb = LearningCurveStopping("val/score", "max", min_points=4, n_bootstrap=10)
    fit(tmp_path, cb, rising, 6)
    assert cb.stopped_epoch is None
    assert len(cb.history["value"]) == 6
    assert cb.last_prediction["convergence_decision"] in ("continue", "no_decision")


def test_missing_monitor_is_an_error_listing_keys_and_the_hook(tmp_path):
    cb = LearningCurveStopping("val/acc", "max")
    with pytest.raises(ValueError, match="on_validation_epoch_end") as err:
        fit(tmp_path, cb, plateau(), 2)
    assert "'val/score'" in str(err.value) and "val/acc" in str(err.value)
    cb = LearningCurveStopping("val/acc", "max", strict=False)
    with pytest.warns(UserWarning, match="strict=False"):
        fit(tmp_path, cb, plateau(), 2)
    assert cb.history["value"] == []


def test_nan_stops_or_warns_never_passes_silently(tmp_path):
    values = [0.2, 0.3, float("nan"), 0.5, 0.6]
    cb = LearningCurveStopping("val/score", "max")
    fit(tmp_path, cb, values, 5)
    assert cb.stopped_epoch == 2 and "diverged" in cb.stop_reason
    cb = LearningCurveStopping("val/score", "max", check_finite=False)
    with pytest.warns(UserWarning, match="left out"):
        fit(tmp_path, cb, values, 5)
    assert cb.stopped_epoch is None and cb.history["value"] == pytest.approx([0.2, 0.3, 0.5, 0.6])


def test_resume_keeps_the_history(tmp_path):
    values = [0.1 + 0.05 * i for i in range(10)]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = LearningCurveStopping("val/score", "max", min_points=20, log_prediction=False)
    trainer = make_trainer(tmp_path, max_epochs=4, callbacks=[cb, ckpt], enable_checkpointing=True)
    trainer.fit(Scripted(values))
    resumed = LearningCurveStopping("val/score", "max", min_points=20, log_prediction=False)
    trainer = make_trainer(tmp_path, max_epochs=7, callbacks=[resumed], enable_checkpointing=False)
    trainer.fit(Scripted(values), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    full = LearningCurveStopping("val/score", "max", min_points=20, log_prediction=False)
    make_trainer(tmp_path / "full", max_epochs=7, callbacks=[full]).fit(Scripted(values))
    assert resumed.history == full.history
    assert len(resumed.history["value"]) == 7


def test_store_records_the_curve_and_the_cross_run_rule_stops_a_loser(tmp_path):
    url = tmp_path / "curves.db"
    store = CurveStore(url, "t", "max")
    for lr in (0.01, 0.02, 0.03):  # three finished good runs
        good = [0.9 - 0.6 * math.exp(-0.5 * i) - lr for i in range(1, 9)]
        run = store.start_run({"lr": lr})
        for i, v in enumerate(good):
            store.report(run, i, v)
        store.finish(run, max(good))
    bad = [0.2 + 0.01 * i for i in range(8)]
    cb = LearningCurveStopping(
        "val/score",
        "max",
        in_run=False,
        store=str(url),
        study_name="t",
        min_points=3,
        min_finished=3,
        log_prediction=False,
        hparams={"lr": 0.05},
    )
    fit(tmp_path, cb, bad, 8)
    assert cb.stopped_epoch == 2 and cb.stop_reason.startswith("cross-run rule")
    stop = next(d for d in cb.decisions if d.action == "stop")
    assert stop.evidence["cross_run_probability"] < 0.05
    runs = store.runs()
    assert [r.state for r in runs] == ["complete"] * 3 + ["stopped"]
    assert runs[-1].values == pytest.approx(bad[:3]) and runs[-1].hparams == {"lr": 0.05}
    assert runs[-1].result == pytest.approx(cb.best_so_far)


def test_sweep_rule_stops_a_run_that_cannot_reach_the_sweep_best(tmp_path):
    url = tmp_path / "curves.db"
    store = CurveStore(url, "s", "max")
    run = store.start_run({"lr": 0.01})
    best_curve = [0.95 - 0.8 * math.exp(-0.5 * i) for i in range(1, 21)]
    for i, v in enumerate(best_curve):
        store.report(run, i, v)
    store.finish(run, max(best_curve))
    low = [0.5 - 0.4 * math.exp(-0.5 * i) for i in range(1, 21)]
    config = {
        "rule": "sweep",
        "store": str(url),
        "study_name": "s",
        "x_axis": "check",
        "horizon": 20,
        "min_points": 6,
        "log_prediction": False,
        "bounds": [0, 1],
    }
    cb = LearningCurveStopping("val/score", "max", **config)
    fit(tmp_path, cb, low, 20)
    assert cb.stopped_epoch is not None and cb.stopped_epoch < 12
    assert cb.stop_reason.startswith("sweep rule") and "sweep's best" in cb.stop_reason
    stop = next(d for d in cb.decisions if d.action == "stop")
    assert stop.evidence["sweep_best"] == pytest.approx(max(best_curve))
    assert stop.evidence["sweep_probability"] < 0.05
    state = cb.state_dict()
    assert state["config"]["rule"] == "sweep" and state["config"]["min_delta"] is None
    restored = LearningCurveStopping("val/score", "max", **config)
    restored.load_state_dict(state)
    assert restored.history == cb.history and restored.stop_reason == cb.stop_reason


# --- issue 24: E1, E4, E6 in the callback; the forecaster option ----------------------------

E1_CURVE = [0.241, 0.365, 0.461, 0.526, 0.542, 0.433, 0.652]


def _noisy(values, seed, sd=0.005):
    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(values), generator=rng).mul(sd).tolist()
    return [min(max(v + e, 0.0), 1.0) for v, e in zip(values, noise)]


@pytest.mark.parametrize("forecaster", [None, "forecast"])
@pytest.mark.parametrize("seed", range(5))
def test_e1_e6_the_forecast_that_decides_is_logged_and_written(tmp_path, seed, forecaster):
    """Issue 24: the E1 curve (horizon 14 checks) is not stopped at its new best, and the
    predicted final value in the evidence, the logged metric and curve_prediction.json are
    one number (the json said 0.697 while the forecast that decided said 0.542); with the
    default forecaster (the PFN) and with the averaged forecast."""
    values = _noisy(E1_CURVE, seed)
    assert values[-1] > max(values[:-1]) + 0.05
    named = {} if forecaster is None else {"forecaster": forecaster}
    cb = LearningCurveStopping(
        "val/score", "max", x_axis="check", horizon=14, min_points=5, bounds=[0, 1], **named
    )
    expected = forecaster or "pfn"
    trainer = fit(tmp_path, cb, values, len(values))
    assert cb.stopped_epoch is None, cb.stop_reason
    assert len(cb.history["value"]) == 7
    last = cb.last_prediction
    assert last["convergence_decision"] == "continue"
    assert "set the run's best" in last["convergence_reason"]
    assert last["convergence_forecaster"] == expected
    record = json.loads((tmp_path / PREDICTION_FILE).read_text())
    predicted = record["predicted"]
    assert predicted is not None and predicted["x"][-1] == pytest.approx(14.0)
    assert predicted["forecaster"] == expected
    assert predicted["mean"][-1] == pytest.approx(last["convergence_predicted_final"], abs=1e-12)
    assert predicted["lower"][-1] == pytest.approx(last["convergence_lower"], abs=1e-12)
    assert predicted["upper"][-1] == pytest.approx(last["convergence_upper"], abs=1e-12)
    logged = float(trainer.callback_metrics["curve/predicted_final"])
    assert logged == pytest.approx(last["convergence_predicted_final"], abs=1e-6)


def test_e4_blind_checks_are_said_in_the_evidence(tmp_path):
    cb = LearningCurveStopping(
        "val/score", "max", min_points=1, x_axis="check", horizon=30, forecaster="forecast"
    )
    fit(tmp_path, cb, [0.2, 0.5, 0.62, 0.7, 0.74], 3)
    assert cb.stopped_epoch is None and len(cb.history["value"]) == 3
    assert cb.last_prediction["convergence_decision"] == "no_decision"
    assert "blind: n < 4" in cb.last_prediction["convergence_reason"]
    # the default forecaster (the PFN) decides from the first check on
    cb = LearningCurveStopping("val/score", "max", min_points=1, x_axis="check", horizon=30)
    fit(tmp_path, cb, [0.2, 0.5, 0.62, 0.7, 0.74], 1)
    assert len(cb.history["value"]) == 1
    assert cb.last_prediction["convergence_decision"] in ("continue", "stop")
    assert cb.last_prediction["convergence_forecaster"] == "pfn"
    # the ensemble forecasts from 3 points: it decides
    cb = LearningCurveStopping(
        "val/score", "max", min_points=1, x_axis="check", horizon=30, forecaster="ensemble"
    )
    fit(tmp_path, cb, [0.2, 0.5, 0.62, 0.7, 0.74], 3)
    assert cb.last_prediction["convergence_decision"] in ("continue", "stop")
    assert cb.last_prediction["convergence_forecaster"] == "ensemble"


def test_forecaster_option_is_validated_and_kept_in_the_config():
    with pytest.raises(ValueError, match="`forecaster` must be one of \\['forecast', 'ensemble'"):
        LearningCurveStopping("val/score", "max", forecaster="lcpfn")
    cb = LearningCurveStopping("val/score", "max", forecaster="ensemble")
    assert cb.state_dict()["config"]["forecaster"] == "ensemble"


# --- issue 23 item 3: validate / test without a train loader; a horizon in steps -----------


NoTrainLoader = ScriptedCore  # loaders are passed to fit/validate, not defined on the module


def test_validate_and_test_without_a_train_loader_make_no_decision(tmp_path):
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    cb = LearningCurveStopping("val/score", "max", min_points=3)
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[cb])
    trainer.validate(NoTrainLoader(plateau()), dataloaders=loader)
    assert cb.history["value"] == [] and cb.decisions == [] and cb.stopped_epoch is None
    # fit with loaders passed in, then validate again: the curve holds the fit's points only
    trainer = make_trainer(tmp_path, max_epochs=4, callbacks=[cb])
    trainer.fit(NoTrainLoader(plateau()), train_dataloaders=loader, val_dataloaders=loader)
    assert len(cb.history["value"]) == 4
    trainer.validate(NoTrainLoader(plateau()), dataloaders=loader)
    assert len(cb.history["value"]) == 4


class Stream(torch.utils.data.IterableDataset):
    """An endless stream of unknown length."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield (torch.randn(2, generator=g),)


class StepScripted(Scripted):
    """Logs ``values[k]`` at its k-th validation (several per epoch: an endless stream)."""

    def __init__(self, values):
        super().__init__(values)
        self.k = 0

    def validation_step(self, batch, batch_idx):
        self.log(self.key, self.values[min(self.k, len(self.values) - 1)], batch_size=1)

    def on_validation_epoch_end(self):
        self.k += 1

    def train_dataloader(self):
        return DataLoader(Stream(), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=4)


@pytest.mark.parametrize("x_axis", ["step", "check"])
def test_the_horizon_comes_from_max_steps_with_a_stream_of_unknown_length(tmp_path, x_axis):
    """Trainer(max_steps=60) on an IterableDataset, validating every 3 steps: the horizon is
    estimated_stepping_batches (60 steps, or 20 checks) and the flat curve stops."""
    cb = LearningCurveStopping("val/score", "max", min_points=5, min_delta=0.01, x_axis=x_axis)
    trainer = make_trainer(
        tmp_path,
        max_epochs=-1,
        max_steps=60,
        val_check_interval=3,
        limit_val_batches=1,
        callbacks=[cb],
    )
    trainer.fit(StepScripted(plateau(20)))
    assert cb.history["step"][:3] == [3, 6, 9]
    predicted = json.loads((tmp_path / PREDICTION_FILE).read_text())["predicted"]
    assert predicted is not None
    assert predicted["x"][-1] == pytest.approx(60.0 if x_axis == "step" else 20.0)
    assert cb.stopped_epoch is not None and trainer.global_step < 60
