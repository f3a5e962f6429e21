"""DropoutSchedule on real digits training: rates per step, resume, DDP, errors."""

from __future__ import annotations

import json

import pytest
import torch
from eecontrol.recipes.digits import DigitsClassifier
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from eecontrol import DropoutSchedule
from eecontrol.callbacks._control import DECISIONS_FILE
from eecontrol.core.schedules import drop_rate
from eecontrol.testing import check_callback_conformance
from tests.conftest import (
    CrashAtEpoch,
    csv_lines,
    csv_trainer,
    digits_data,
    digits_model,
    fit_on_two_processes,
    make_trainer,
)
from tests.core.test_drop_targets import Block


def logged_rates(path, key: str = "dropout/rate") -> dict[int, float]:
    """``{step: rate}`` of the rows of a CSV logger's ``metrics.csv`` that hold ``key``."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    col, step_col = header.index(key), header.index("step")
    return {
        int(row.split(",")[step_col]): float(row.split(",")[col])
        for row in lines[1:]
        if row.split(",")[col]
    }


class RateRecorder(Callback):
    """Records, at every training micro-batch, the rates really set in the model."""

    def __init__(self, path: str | None = None) -> None:
        self.seen: list[tuple[int, int, float, float | None]] = []
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        drops = [m.p for m in pl_module.modules() if isinstance(m, nn.Dropout | nn.Dropout2d)]
        paths = [m.drop_prob for m in pl_module.modules() if hasattr(m, "drop_prob")]
        assert len(set(drops)) <= 1
        self.seen.append(
            (
                trainer.global_step,
                batch_idx,
                drops[0] if drops else None,
                paths[-1] if paths else None,
            )
        )

    def on_fit_end(self, trainer, pl_module):
        if self.path:
            with open(f"{self.path}/rates{trainer.global_rank}.json", "w") as f:
                json.dump(self.seen, f)


def test_conformance(tmp_path):
    cb = DropoutSchedule(p=0.2, mode="early", cutoff=0.5)
    make_trainer(tmp_path, max_epochs=2, limit_train_batches=3, callbacks=[cb]).fit(
        digits_model(), datamodule=digits_data()
    )
    check_callback_conformance(
        DropoutSchedule,
        valid=[{"mode": "early"}, {"mode": "late"}, {"mode": "early", "target": "both"}],
        invalid=[
            ({"p": 1.0}, "`p`", "[0.0, 1.0)"),
            ({"p": -0.1}, "`p`", "[0.0, 1.0)"),
            ({"p": float("nan")}, "`p`", "[0.0, 1.0)"),
            ({"mode": "middle"}, "`mode`", "['standard', 'early', 'late']"),
            ({"schedule": "cosine"}, "`schedule`", "['constant', 'linear']"),
            ({"cutoff": 1.5}, "`cutoff`", "[0.0, 1.0]"),
            ({"cutoff": -2, "cutoff_unit": "epochs"}, "`cutoff`", "[0.0, inf)"),
            ({"cutoff": None}, "`cutoff`", "required"),
            ({"cutoff_unit": "batches"}, "`cutoff_unit`", "['fraction', 'epochs', 'steps']"),
            ({"cutoff": 2.5, "cutoff_unit": "steps"}, "`cutoff`", "[0, inf)"),
            ({"target": "dropblock"}, "`target`", "['dropout', 'drop_path', 'both']"),
            ({"drop_path_rate": 1.2}, "`drop_path_rate`", "[0.0, 1.0)"),
            (
                {"drop_path_per_block": "cosine"},
                "`drop_path_per_block`",
                "['linear', 'efficientnet', 'uniform']",
            ),
            ({"float_attributes": "dropout"}, "`float_attributes`", "list of attribute names"),
        ],
        after_fit=(cb, {"p": 0.2, "mode": "early", "cutoff": 0.5}),
    )


@pytest.mark.parametrize(
    ("mode", "schedule"), [("early", "linear"), ("late", "constant"), ("early", "constant")]
)
@pytest.mark.parametrize("accumulate", [1, 3])
def test_rates_applied_per_optimizer_step(tmp_path, mode, schedule, accumulate):
    rec = RateRecorder()
    cb = DropoutSchedule(p=0.3, mode=mode, schedule=schedule, cutoff=2, cutoff_unit="epochs")
    trainer = make_trainer(
        tmp_path,
        max_epochs=4,
        limit_train_batches=7,
        accumulate_grad_batches=accumulate,
        callbacks=[cb, rec],
    )
    trainer.fit(digits_model(), datamodule=digits_data())
    steps_per_epoch = -(-7 // accumulate)
    total = 4 * steps_per_epoch
    assert trainer.global_step == total
    for step, _, rate, _ in rec.seen:
        assert rate == drop_rate(step, 0.3, total, 2 * steps_per_epoch, mode, schedule)
    # within an accumulation group the rate never changes
    by_step: dict[int, set[float]] = {}
    for step, _, rate, _ in rec.seen:
        by_step.setdefault(step, set()).add(rate)
    assert all(len(v) == 1 for v in by_step.values())
    actions = [d.action for d in cb.decisions]
    assert actions == ["schedule", "dropout_off" if mode == "early" else "dropout_on"]
    flip = cb.decisions[1].step
    expected_flip = 2 * steps_per_epoch - (1 if schedule == "linear" else 0)
    assert flip == expected_flip
    journal = [json.loads(x) for x in (tmp_path / DECISIONS_FILE).read_text().splitlines()]
    assert [x["action"] for x in journal] == actions


def test_logged_rate_reaches_the_loggers(tmp_path):
    cb = DropoutSchedule(p=0.2, mode="early", cutoff=0.5)
    trainer = csv_trainer(
        tmp_path, max_epochs=2, limit_train_batches=4, callbacks=[cb], log_every_n_steps=1
    )
    trainer.fit(digits_model(), datamodule=digits_data())
    assert "dropout/rate" in csv_lines(tmp_path)[0]
    assert "dropout/rate" in trainer.progress_bar_metrics


def test_resume_mid_run_continues_the_schedule_exactly(tmp_path):
    def run(root, callbacks, ckpt_path=None):
        trainer = make_trainer(
            root,
            max_epochs=6,
            limit_train_batches=5,
            callbacks=callbacks,
            enable_checkpointing=True,
        )
        trainer.fit(digits_model(), datamodule=digits_data(), ckpt_path=ckpt_path)
        return trainer

    ref_rec = RateRecorder()
    ref = DropoutSchedule(p=0.25, mode="early", schedule="linear", cutoff=0.5)
    run(
        tmp_path / "ref",
        [ref, ref_rec, ModelCheckpoint(dirpath=tmp_path / "ref" / "c", save_last=True)],
    )

    rec1 = RateRecorder()
    cb1 = DropoutSchedule(p=0.25, mode="early", schedule="linear", cutoff=0.5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(
            tmp_path / "run",
            [
                cb1,
                rec1,
                CrashAtEpoch(4),
                ModelCheckpoint(dirpath=tmp_path / "run" / "c", save_last=True),
            ],
        )
    rec2 = RateRecorder()
    cb2 = DropoutSchedule(p=0.25, mode="early", schedule="linear", cutoff=0.5)
    run(
        tmp_path / "run",
        [cb2, rec2, ModelCheckpoint(dirpath=tmp_path / "run" / "c", save_last=True)],
        ckpt_path=tmp_path / "run" / "c" / "last.ckpt",
    )
    assert rec1.seen + rec2.seen == ref_rec.seen
    assert cb2.decisions == [d for d in ref.decisions]
    assert (tmp_path / "run" / DECISIONS_FILE).read_text() == (
        tmp_path / "ref" / DECISIONS_FILE
    ).read_text()


@pytest.mark.timeout(180)
def test_ddp_ranks_use_the_same_rate(tmp_path):
    cb = DropoutSchedule(p=0.3, mode="late", cutoff=0.5)
    callbacks = [cb, RateRecorder(str(tmp_path))]
    fit_on_two_processes(
        tmp_path, callbacks, max_epochs=2, limit_train_batches=4, limit_val_batches=1
    )
    r0 = json.loads((tmp_path / "rates0.json").read_text())
    r1 = json.loads((tmp_path / "rates1.json").read_text())
    assert r0 == r1 and len(r0) == 8
    assert {r[2] for r in r0} == {0.0, 0.3}


def test_stochastic_depth_and_dropout_with_independent_rates(tmp_path):
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 4),
        *[Block(0.1) for _ in range(4)],
        nn.Dropout(0.1),
        nn.Linear(4, 10),
    )
    rec = RateRecorder()
    cb = DropoutSchedule(p=0.2, drop_path_rate=0.4, mode="late", cutoff=0.5, target="both")
    make_trainer(tmp_path, max_epochs=2, limit_train_batches=3, callbacks=[cb, rec]).fit(
        DigitsClassifier(net=net), datamodule=digits_data()
    )
    reference = [x.item() for x in torch.linspace(0, 0.4, 4)]  # the reference's float32 rates
    assert {(r[2], r[3]) for r in rec.seen} == {(0.0, 0.0), (0.2, reference[-1])}
    blocks = [m.drop_prob for m in net.modules() if hasattr(m, "drop_prob")]
    assert blocks == reference and blocks == pytest.approx([0.0, 0.4 / 3, 0.8 / 3, 0.4])


@pytest.mark.parametrize(
    ("kwargs", "model", "message"),
    [
        (
            {"cutoff": 12, "cutoff_unit": "epochs"},
            "cnn",
            r"cutoff=12.0` epochs lies beyond training \(3 epochs",
        ),
        ({}, "nodrop", r"no dropout target found in DigitsClassifier"),
        ({"target": "drop_path"}, "cnn", r"drop_path_rate > 0"),
    ],
)
def test_errors_at_fit_start(tmp_path, kwargs, model, message):
    m = (
        digits_model()
        if model == "cnn"
        else DigitsClassifier(net=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    )
    trainer = make_trainer(
        tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[DropoutSchedule(**kwargs)]
    )
    with pytest.raises(ValueError, match=message):
        trainer.fit(m, datamodule=digits_data())


def test_unbounded_training_is_an_error(tmp_path):
    trainer = make_trainer(
        tmp_path, max_epochs=-1, max_steps=-1, limit_train_batches=2, callbacks=[DropoutSchedule()]
    )
    with pytest.raises(ValueError, match="finite training length"):
        trainer.fit(digits_model(), datamodule=digits_data())


def test_setup_report_lists_controlled_and_left_out_rates(tmp_path):
    class Head(nn.Module):
        """A module with a rate the default names do not match (``my_drop_rate``)."""

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 10)
            self.attention_dropout = 0  # an int rate, as Hugging Face configs leave it
            self.my_drop_rate = 0.2

        def forward(self, x):
            return self.lin(x)

    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), Head())
    cb = DropoutSchedule(p=0.2, mode="late", cutoff=0.5)
    with pytest.warns(UserWarning, match=r"controls only 67% .*2\.my_drop_rate"):
        make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[cb]).fit(
            DigitsClassifier(net=net), datamodule=digits_data()
        )
    schedule = cb.decisions[0]
    assert schedule.action == "schedule"
    assert schedule.evidence["dropout_targets"] == 2  # nn.Dropout p and the int attribute
    assert schedule.evidence["rate_coverage"] == pytest.approx(2 / 3)
    assert "2.my_drop_rate (name not matched)" in schedule.evidence["left_out"]
    assert "torch_dropout" in schedule.evidence["controlled_by_family"]
    assert net[2].attention_dropout == 0.2 and isinstance(net[2].attention_dropout, float)
    journal = [json.loads(x) for x in (tmp_path / DECISIONS_FILE).read_text().splitlines()]
    assert journal[0]["evidence"]["left_out"] == schedule.evidence["left_out"]


@pytest.mark.parametrize(("mode", "schedule"), [("early", "constant"), ("late", "linear")])
def test_logged_rate_series_has_a_point_at_every_change(tmp_path, mode, schedule):
    """Issue 27: at the loggers' cadence alone (every 5 steps), ``rates.png`` drew the phase
    change at step 10 while the decision said 7. The rate is logged at every change too, so
    the logged series (drawn as steps) equals the schedule at every optimizer step."""
    from lightning.pytorch.loggers import CSVLogger

    cb = DropoutSchedule(p=0.2, mode=mode, schedule=schedule, cutoff=7, cutoff_unit="steps")
    trainer = make_trainer(
        tmp_path,
        max_epochs=-1,
        max_steps=12,
        callbacks=[cb],
        logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=5,
        limit_val_batches=0,
    )
    trainer.fit(digits_model(), datamodule=digits_data())
    assert trainer.global_step == 12
    logged = logged_rates(tmp_path / "csv" / "version_0" / "metrics.csv")
    schedule_at = {s: drop_rate(s, 0.2, 12, 7, mode, schedule) for s in range(12)}
    changes = [s for s in range(1, 12) if schedule_at[s] != schedule_at[s - 1]]
    # the schedule really changes: at the cutoff (early constant), or every step after it
    # (late linear: 0 until step 7, then the ramp)
    assert changes == ([7] if schedule == "constant" else [8, 9, 10, 11])
    flip = [d.step for d in cb.decisions if d.action != "schedule"]
    assert flip == [changes[0]]  # the decision's step
    for s in changes:  # a point at each change step, equal to the schedule
        assert s in logged and logged[s] == pytest.approx(schedule_at[s]), (s, logged)
    for s in range(12):  # drawn as steps (where="post"): the schedule at every step
        last = max(t for t in logged if t <= s)
        assert logged[last] == pytest.approx(schedule_at[s]), (s, logged)
