"""Callback instances reused across fits (issue 23 item 6): a loop over folds or seeds with
a new Trainer and model starts every callback fresh (and says so); ``fit`` again on the same
Trainer continues (progress kept, plans rebuilt); a checkpoint resumes."""

from __future__ import annotations

import json
import logging

import pytest
from lightning.pytorch.callbacks import Callback

from eecontrol import ConformalEarlyStopping, DropoutSchedule, GradES
from eecontrol.callbacks._control import DECISIONS_FILE
from eecontrol.callbacks.curve_stopping import LearningCurveStopping
from eecontrol.core.schedules import drop_rate
from eecontrol.sweep.store import CurveStore
from tests.callbacks.llm_setting import TinyLlama, loaders
from tests.conftest import digits_data, digits_model, make_trainer


class StartState(Callback):
    """At the first training batch: steps done, and parameters that cannot train."""

    def __init__(self) -> None:
        self.global_step: int | None = None
        self.untrainable: list[str] = []
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batches == 0:
            self.global_step = trainer.global_step
            self.untrainable = [n for n, p in pl_module.named_parameters() if not p.requires_grad]
        self.batches += 1


def test_a_loop_over_folds_starts_every_callback_fresh(tmp_path, caplog):
    # GradES freezes everything at its grace step and stops the first fold; the second fold
    # (new Trainer, new model, same callback instances) must train from step 0 with nothing
    # frozen, and every callback's decisions, curve and plan are the second fold's own.
    grades = GradES(tau=1e9, grace=0.5)
    dropout = DropoutSchedule(p=0.2, mode="early", cutoff=0.5)
    url = f"sqlite:///{tmp_path / 'curves.db'}"
    curve = LearningCurveStopping(monitor="val/loss", store=url, min_points=50)
    callbacks = [grades, dropout, curve]
    folds = []
    for fold in range(2):
        start = StartState()
        train, val = loaders("map")
        trainer = make_trainer(
            tmp_path / f"fold{fold}",
            max_epochs=2,
            val_check_interval=4,
            callbacks=[*callbacks, start],
        )
        with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
            trainer.fit(TinyLlama(seed=fold), train, val)
        folds.append((trainer, start, curve.history["step"]))
        journal = (tmp_path / f"fold{fold}" / DECISIONS_FILE).read_text().splitlines()
        assert [json.loads(x)["key"] for x in journal].count(grades.name) >= 2

    (t0, _, curve0), (t1, s1, curve1) = folds
    assert t0.global_step == 9 and grades.stopped_step is not None  # 8 steps, froze at 8
    # the second fold trained: from step 0, nothing frozen at its start
    assert s1.global_step == 0 and s1.untrainable == [] and s1.batches == 9
    assert t1.global_step == 9
    for cb in callbacks:
        assert cb.fit_kind == "fresh"
        assert all(d.step <= t1.global_step for d in cb.decisions)
    assert [d.action for d in grades.decisions][:1] == ["setup"]
    assert set(grades.frozen.values()) == {8}  # frozen again at the second fold's grace step
    assert dropout.decisions[0].action == "schedule"
    # validations after steps 4 and 8, and at the stop: the second fold's own curve
    assert curve0 == [4, 8, 9] and curve1 == [4, 8, 9]
    runs = CurveStore(url, "eecontrol-curves", "min").runs()
    assert [len(r.values) for r in runs] == [3, 3]  # one stored curve per fold
    fresh = [r.getMessage() for r in caplog.records if "starting fresh" in r.getMessage()]
    assert len(fresh) == len(callbacks)  # one line per callback, second fold only


def test_conformal_early_stopping_reused_with_a_new_trainer(tmp_path):
    ces = ConformalEarlyStopping()
    for fold in range(2):
        trainer = make_trainer(
            tmp_path / f"fold{fold}", max_epochs=2 + fold, limit_train_batches=2, callbacks=[ces]
        )
        trainer.fit(digits_model(), datamodule=digits_data())
        assert ces.fit_kind == "fresh"
        assert ces.epochs == list(range(2 + fold))  # this fold's candidates only
        assert all((tmp_path / f"fold{fold}" / "ces").glob("*"))
    assert ces.decisions and ces.decisions[0].action == "plan"


def test_fit_again_on_the_same_trainer_continues_and_replans(tmp_path):
    dropout = DropoutSchedule(p=0.2, mode="early", schedule="linear", cutoff=0.5)
    grades = GradES(tau=1e9, grace=0.5, max_frozen_ratio=1.0)
    rates: list[tuple[int, float]] = []

    class Rates(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append((trainer.global_step, pl_module.net.config.attention_dropout))

    train, val = loaders("map")
    module = TinyLlama()
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[dropout, Rates()])
    trainer.fit(module, train, val)
    assert trainer.global_step == 8 and dropout.fit_kind == "fresh"
    trainer.fit_loop.max_epochs = 3
    trainer.fit(module, train, val)
    assert trainer.global_step == 24 and dropout.fit_kind == "continued"
    plans = [d for d in dropout.decisions if d.action == "schedule"]
    assert [p.evidence["total_steps"] for p in plans] == [8, 24]  # a new plan, not a stale one
    assert plans[1].evidence["start_step"] == 8 and plans[1].evidence["cutoff_step"] == 12
    for step, rate in rates[8:]:
        assert rate == pytest.approx(drop_rate(step, 0.2, 24, 12, "early", "linear"))
    # GradES on a continued fit keeps its frozen set and reports the new plan
    trainer = make_trainer(tmp_path / "g", max_epochs=1, callbacks=[grades], limit_val_batches=0)
    trainer.fit(TinyLlama(), train, val)
    frozen = dict(grades.frozen)
    assert frozen and grades.stopped_step is not None
    trainer.fit_loop.max_epochs = 2
    trainer.fit(trainer.lightning_module, train, val)
    assert grades.fit_kind == "continued" and grades.frozen == frozen
    assert trainer.global_step == 5  # the stop holds on a continued fit: nothing trained
