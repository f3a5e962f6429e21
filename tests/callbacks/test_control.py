"""The decision contract: records, journal, stop sync across ranks, state rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from eecontrol.callbacks._control import (
    DECISIONS_FILE,
    ControlCallback,
    Decision,
    check_choice,
    check_range,
)
from eecontrol.testing import check_callback_conformance, roundtrip_state
from tests.conftest import digits_data, digits_model, make_trainer


class StopAtEpoch(ControlCallback):
    """A test callback: stops at ``epoch`` on ``rank`` (every rank if None)."""

    def __init__(self, epoch: int = 1, rank: int | None = None) -> None:
        super().__init__()
        check_range("epoch", epoch, low=0, integer=True)
        self.epoch, self.rank = epoch, rank
        self.checks = 0

    def _config(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "rank": self.rank}

    def _progress_state(self) -> dict[str, Any]:
        return {"checks": self.checks}

    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self.checks = state["checks"]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.checks += 1
        mine = trainer.current_epoch >= self.epoch and (
            self.rank is None or trainer.global_rank == self.rank
        )
        self._stop(
            trainer, mine, f"epoch {trainer.current_epoch} >= {self.epoch}", {"checks": self.checks}
        )


def test_decision_round_trip_and_missing_fields():
    d = Decision(3, 1, "cb", "stop", "why", {"x": 1.5})
    assert Decision.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    with pytest.raises(ValueError, match="missing fields"):
        Decision.from_dict({"step": 1})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"value": -1, "low": 0}, "`a` must be a number in [0, inf), got -1."),
        (
            {"value": 1.0, "low": 0, "high": 1, "high_inclusive": False},
            "`a` must be a number in [0, 1), got 1.0.",
        ),
        ({"value": float("nan"), "low": 0}, "`a` must be a finite number in [0, inf), got nan."),
        ({"value": "x", "low": 0}, "`a` must be a number"),
        ({"value": True, "low": 0}, "`a` must be a number"),
        ({"value": 1.5, "low": 0, "integer": True}, "`a` must be an integer in [0, inf), got 1.5."),
    ],
)
def test_check_range_messages(kwargs, message):
    with pytest.raises(ValueError) as err:
        check_range("a", **kwargs)
    assert message in str(err.value)


def test_check_choice():
    assert check_choice("m", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"`m` must be one of \['a', 'b'\], got 'c'."):
        check_choice("m", "c", ("a", "b"))


def test_stop_writes_decision_everywhere(tmp_path):
    cb = StopAtEpoch(epoch=1)
    trainer = make_trainer(tmp_path, max_epochs=5, limit_train_batches=3, callbacks=[cb])
    trainer.fit(digits_model(), datamodule=digits_data())
    assert trainer.current_epoch == 2 and cb.stopped_epoch == 1
    lines = [json.loads(x) for x in (tmp_path / DECISIONS_FILE).read_text().splitlines()]
    assert [x["action"] for x in lines] == ["stop"]
    assert lines[0]["evidence"] == {"checks": 2} and lines[0]["epoch"] == 1
    assert cb.decisions[0].reason == "epoch 1 >= 1"


def test_conformance_kit_accepts_a_correct_callback_and_catches_a_broken_one(tmp_path):
    cb = StopAtEpoch(epoch=0)
    make_trainer(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[cb]).fit(
        digits_model(), datamodule=digits_data()
    )
    check_callback_conformance(
        StopAtEpoch,
        valid=[{"epoch": 1}, {"epoch": 2, "rank": 0}],
        invalid=[({"epoch": -1}, "epoch", "[0, inf)"), ({"epoch": 0.5}, "epoch", "integer")],
        after_fit=(cb, {"epoch": 0}),
    )

    class Leaky(StopAtEpoch):
        def _progress_state(self):
            return {"obj": object()}

    with pytest.raises(AssertionError, match="not a primitive"):
        check_callback_conformance(Leaky, [{"epoch": 1}, {"epoch": 2}], [])
    with pytest.raises(AssertionError, match="was accepted"):
        check_callback_conformance(
            StopAtEpoch, [{"epoch": 1}, {"epoch": 2}], [({"epoch": 3}, "epoch", "x")]
        )


def test_resume_of_a_stopped_run_does_not_train_again(tmp_path):
    cb = StopAtEpoch(epoch=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = make_trainer(
        tmp_path,
        max_epochs=6,
        limit_train_batches=2,
        callbacks=[cb, ckpt],
        enable_checkpointing=True,
    )
    trainer.fit(digits_model(), datamodule=digits_data())
    steps = trainer.global_step
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"][
        cb.state_key
    ]
    assert state["stopped_epoch"] == 1

    cb2 = StopAtEpoch(epoch=1)
    trainer2 = make_trainer(tmp_path, max_epochs=6, limit_train_batches=2, callbacks=[cb2])
    trainer2.fit(
        digits_model(), datamodule=digits_data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert trainer2.global_step == steps, "a stopped run trained again after resume"
    assert cb2.stopped_epoch == 1 and len(cb2.decisions) == 1
    lines = (tmp_path / DECISIONS_FILE).read_text().splitlines()
    assert len(lines) == 1, "resume duplicated the journal"


def test_changed_config_on_resume_warns_and_uses_constructor():
    cb = StopAtEpoch(epoch=3)
    state = roundtrip_state(cb)
    cb2 = StopAtEpoch(epoch=5)
    with pytest.warns(UserWarning, match=r"epoch: 3 -> 5"):
        cb2.load_state_dict(state)
    assert cb2.epoch == 5


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"checks": 2}, "no 'version' key"),
        ({"version": 99}, "version 99 is not supported"),
        ("junk", "no 'version'"),
    ],
)
def test_foreign_or_old_state_is_a_clear_error(state, message):
    with pytest.raises(ValueError, match=message):
        StopAtEpoch().load_state_dict(state)


def test_new_fit_keeps_a_previous_journal(tmp_path):
    (tmp_path / DECISIONS_FILE).write_text('{"old": 1}\n')
    cb = StopAtEpoch(epoch=0)
    make_trainer(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[cb]).fit(
        digits_model(), datamodule=digits_data()
    )
    assert (tmp_path / f"{DECISIONS_FILE}.1").read_text() == '{"old": 1}\n'
    assert len((tmp_path / DECISIONS_FILE).read_text().splitlines()) == 1


def _ddp_worker_results(tmp_path, strategy: str) -> list[dict]:
    cb = StopAtEpoch(epoch=1, rank=1)  # only rank 1 wants to stop
    trainer = make_trainer(
        tmp_path,
        max_epochs=6,
        limit_train_batches=2,
        limit_val_batches=1,
        strategy=strategy,
        devices=2,
        callbacks=[cb, _RankReport(tmp_path)],
    )
    trainer.fit(digits_model(), datamodule=digits_data())
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]


class _RankReport(Callback):
    """Writes each rank's view of the stop decision."""

    def __init__(self, root):
        super().__init__()
        self.root = str(root)

    def on_fit_end(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, StopAtEpoch))
        with open(f"{self.root}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(
                {
                    "epoch": trainer.current_epoch,
                    "stopped": cb.stopped_epoch,
                    "decisions": [d.to_dict() for d in cb.decisions],
                },
                f,
            )


@pytest.mark.timeout(180)
def test_ddp_one_rank_stops_all_stop(tmp_path):
    results = _ddp_worker_results(tmp_path, "ddp_spawn")
    assert len(results) == 2
    assert results[0] == results[1], "ranks disagree"
    assert results[0]["stopped"] == 1 and results[0]["epoch"] == 2
    assert [d["action"] for d in results[0]["decisions"]] == ["stop"]


def test_any_control_callback_reused_with_a_new_trainer_starts_fresh(tmp_path):
    """The base class alone: a stopped run's stop and progress do not leak into a new fit
    (before, the second fit trained 0 steps "after resume" with nothing resumed)."""
    cb = StopAtEpoch(epoch=1)
    steps = []
    for fold in range(2):
        trainer = make_trainer(
            tmp_path / f"fold{fold}", max_epochs=5, limit_train_batches=2, callbacks=[cb]
        )
        trainer.fit(digits_model(), datamodule=digits_data())
        steps.append(trainer.global_step)
    assert steps == [4, 4]  # 2 epochs of 2 steps, then the stop, in each fold
    assert cb.fit_kind == "fresh" and cb.stopped_epoch == 1
    assert cb.checks == 2 and [d.action for d in cb.decisions] == ["stop"]
    # the same Trainer again (continued training): the stop holds, nothing trains
    trainer.fit_loop.max_epochs = 6
    trainer.fit(trainer.lightning_module, datamodule=digits_data())
    assert cb.fit_kind == "continued" and trainer.global_step == 4 and cb.checks == 2
