"""Resumed from an epoch-end checkpoint under ``max_steps``, epoch e + 1 draws epoch e + 1's
data order (found by the matrix's ``ResumableCheckpoint-steps_map`` cell).

Lightning writes that checkpoint between counting the epoch processed and completed, and
with ``max_steps`` it replays the epoch end on resume and counts it processed twice: the
sampler got ``set_epoch(2)`` for epoch 1. ``ResumableCheckpoint`` records the epoch as not
yet processed when it saves at an epoch end under ``max_steps``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from eecontrol.resume import ResumableCheckpoint
from tests.settings.harness import (
    CALLBACKS,
    SETTINGS,
    CrashAt,
    StartStep,
    build_module,
    epoch_seed,
    loaders,
    trainer_kwargs,
)

pytestmark = pytest.mark.timeout(120)


class EpochOrders(Callback):
    """(current_epoch, the sampler's epoch) at every training epoch's first batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            sampler = trainer.train_dataloader.sampler
            self.seen.append((int(trainer.current_epoch), int(sampler.epoch)))


def _fit(root, crash_at=None, ckpt_path=None) -> tuple[EpochOrders, StartStep, pl.Trainer]:
    setting = SETTINGS["steps_map"]  # max_steps=20, 12 batches per epoch
    torch.manual_seed(0)
    orders, start = EpochOrders(), StartStep()
    callbacks = [epoch_seed(setting), ResumableCheckpoint(dirpath=root / "ck"), start, orders]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    trainer = pl.Trainer(**trainer_kwargs(setting, root, callbacks))
    module = build_module(CALLBACKS["ResumableCheckpoint"], setting)
    train, val = loaders("llama", stream=False)
    try:
        trainer.fit(module, train, val, ckpt_path=ckpt_path, weights_only=True)
    except RuntimeError as err:
        assert "simulated crash" in str(err)
    return orders, start, trainer


def test_epoch_end_resume_under_max_steps_draws_the_next_epochs_order(tmp_path):
    reference, _, _ = _fit(tmp_path / "reference")
    assert reference.seen == [(0, 0), (1, 1)]
    crashed, _, _ = _fit(tmp_path / "run", crash_at=13)  # dies in epoch 1, after step 12
    assert crashed.seen == [(0, 0), (1, 1)], crashed.seen
    ckpt = tmp_path / "run" / "ck" / "last.ckpt"
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["global_step"] == 12
    resumed, start, trainer = _fit(tmp_path / "run", ckpt_path=str(ckpt))
    assert start.step == 12, "the resumed run did not start from the epoch-end checkpoint"
    assert resumed.seen == [(1, 1)], f"(current_epoch, sampler epoch) after resume: {resumed.seen}"
    assert trainer.global_step == 20
