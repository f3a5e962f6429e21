"""DropoutSchedule in step-based settings (issue 23 items 1, 2, 9): ``max_steps`` with a
map dataset or a stream, mid-epoch validation, accumulation, manual optimization with one
and two optimizers, and logging at the loggers' cadence. A tiny random Llama classifier
(from a config) on the digits read as pixel tokens."""

from __future__ import annotations

import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from eecontrol import DropoutSchedule
from eecontrol.core.schedules import drop_rate
from tests.callbacks.llm_setting import TinyLlama, loaders
from tests.callbacks.test_dropout import logged_rates
from tests.conftest import count_log_calls, make_trainer


class AttentionRates(Callback):
    """Records, at every training micro-batch, the batch index, ``global_step`` and the
    attention dropout rate really set in every Llama attention module (and its config)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float]] = []
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        rates = {
            m.attention_dropout for m in pl_module.modules() if hasattr(m, "attention_dropout")
        }
        rates.add(pl_module.net.config.attention_dropout)
        assert len(rates) == 1, f"targets disagree: {rates}"
        self.seen.append((self.batches, trainer.global_step, rates.pop()))
        self.batches += 1


def _fit(tmp_path, cb, data="map", module=None, **trainer_kwargs):
    rec = AttentionRates()
    train, val = loaders(data)
    trainer = make_trainer(tmp_path, callbacks=[cb, rec], **trainer_kwargs)
    trainer.fit(module or TinyLlama(), train, val)
    plan = cb.decisions[0]
    assert plan.action == "schedule"
    return trainer, rec, plan


@pytest.mark.parametrize(
    ("data", "kwargs"),
    [
        ("map", {"max_steps": 12, "max_epochs": None}),
        ("map", {"max_steps": 12, "max_epochs": -1, "val_check_interval": 4}),
        ("map", {"max_steps": 6, "max_epochs": None, "accumulate_grad_batches": 2}),
        ("stream", {"max_steps": 12, "max_epochs": -1, "val_check_interval": 5}),
        ("stream", {"max_steps": 12, "max_epochs": None, "val_check_interval": 5}),
    ],
)
@pytest.mark.parametrize(
    ("schedule", "cutoff", "unit"),
    [("constant", 0.5, "fraction"), ("linear", 5, "steps")],
)
def test_rate_follows_the_schedule_under_max_steps(tmp_path, data, kwargs, schedule, cutoff, unit):
    cb = DropoutSchedule(p=0.2, mode="early", schedule=schedule, cutoff=cutoff, cutoff_unit=unit)
    trainer, rec, plan = _fit(tmp_path, cb, data, **kwargs)
    total = kwargs["max_steps"]
    accumulate = kwargs.get("accumulate_grad_batches", 1)
    assert trainer.global_step == total and plan.evidence["total_steps"] == total
    cutoff_step = round(cutoff * total) if unit == "fraction" else cutoff
    assert plan.evidence["cutoff_step"] == cutoff_step
    assert len(rec.seen) == total * accumulate  # every micro-batch recorded
    for _, step, rate in rec.seen:  # every micro-batch of every accumulation group
        assert rate == pytest.approx(drop_rate(step, 0.2, total, cutoff_step, "early", schedule))
    assert {r for *_, r in rec.seen} >= {0.0, 0.2}  # the schedule really switched off


def test_epochs_cutoff_on_a_stream_is_a_clear_error(tmp_path):
    cb = DropoutSchedule(p=0.2, cutoff=1, cutoff_unit="epochs")
    with pytest.raises(ValueError, match=r"cutoff_unit='epochs' needs epochs of known length"):
        _fit(tmp_path, cb, "stream", max_steps=6, max_epochs=-1)


def test_epochs_cutoff_with_max_steps_on_a_map_dataset(tmp_path):
    # 8 batches per epoch: cutoff 1 epoch = step 8 of 12
    cb = DropoutSchedule(p=0.2, cutoff=1, cutoff_unit="epochs")
    _, rec, plan = _fit(tmp_path, cb, "map", max_steps=12, max_epochs=None)
    assert plan.evidence["steps_per_epoch"] == 8 and plan.evidence["cutoff_step"] == 8
    assert [r for _, s, r in rec.seen if s < 8] == [0.2] * 8
    assert [r for _, s, r in rec.seen if s >= 8] == [0.0] * 4


def test_steps_cutoff_beyond_training_is_a_clear_error(tmp_path):
    cb = DropoutSchedule(p=0.2, cutoff=50, cutoff_unit="steps")
    with pytest.raises(ValueError, match=r"`cutoff=50` optimizer steps lies beyond training"):
        _fit(tmp_path, cb, "map", max_steps=12, max_epochs=None)


@pytest.mark.parametrize("optimizers", [1, 2])
def test_manual_optimization_plans_and_indexes_in_training_batches(tmp_path, optimizers):
    # 8 batches x 3 epochs = 24 batches; two optimizers step twice per batch (global_step 48)
    cb = DropoutSchedule(p=0.2, mode="early", schedule="linear", cutoff=0.5)
    module = TinyLlama(manual=True, optimizers=optimizers)
    trainer, rec, plan = _fit(tmp_path, cb, "map", module=module, max_epochs=3)
    assert trainer.global_step == 24 * optimizers
    assert plan.evidence["total_steps"] == 24 and plan.evidence["cutoff_step"] == 12
    assert "training batches" in plan.reason
    assert len(rec.seen) == 24
    for batch, _, rate in rec.seen:
        assert rate == pytest.approx(drop_rate(batch, 0.2, 24, 12, "early", "linear"))
    off = [d for d in cb.decisions if d.action == "dropout_off"]
    # linear reaches exactly 0 at batch cutoff - 1; decisions keep global_step
    assert len(off) == 1 and off[0].step == 11 * optimizers


def test_manual_two_optimizers_with_max_steps_warns_and_plans_in_batches(tmp_path):
    cb = DropoutSchedule(p=0.2, mode="early", cutoff=0.5)
    module = TinyLlama(manual=True, optimizers=2)
    with pytest.warns(UserWarning, match=r"max_steps=20.*lasts 10 batches"):
        trainer, rec, plan = _fit(tmp_path, cb, "map", module=module, max_steps=20, max_epochs=-1)
    assert trainer.global_step == 20 and len(rec.seen) == 10  # 10 batches really ran
    assert plan.evidence["total_steps"] == 10 and plan.evidence["cutoff_step"] == 5
    assert [r for *_, r in rec.seen] == [0.2] * 5 + [0.0] * 5


def test_rate_is_logged_once_per_optimizer_step_at_the_loggers_cadence(tmp_path):
    # Lightning's self.log per micro-batch cost several percent of a small model's step:
    # the rate goes to the loggers directly, on the first micro-batch of a logged step only.
    cb = DropoutSchedule(p=0.2, mode="early", cutoff=0.5)
    module = TinyLlama()
    calls = count_log_calls(module)
    trainer, rec, _ = _fit(
        tmp_path,
        cb,
        "map",
        module=module,
        max_steps=8,
        max_epochs=None,
        accumulate_grad_batches=2,
        logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=2,
        limit_val_batches=0,
    )
    assert len(rec.seen) == 16  # 16 micro-batches ran
    # self.log only when the rate changes (for Lightning's progress bar): on, then off
    assert [c for c in calls if c == "dropout/rate"] == ["dropout/rate"] * 2
    assert "dropout/rate" in trainer.progress_bar_metrics
    logged = logged_rates(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert logged == {s: drop_rate(s, 0.2, 8, 4) for s in (0, 2, 4, 6)}
