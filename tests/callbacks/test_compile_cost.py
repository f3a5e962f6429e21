"""torch.compile with GradES and DropoutSchedule (issue 23 item 8): each freeze step and
each distinct dropout rate compiles the model again (torch guards on ``requires_grad`` and
on float rates); the callbacks say at setup how many recompiles the run will cost, and warn
when that reaches torch's ``recompile_limit`` (past it the model silently runs eagerly).
Counted with torch's own compile counter on the ``aot_eager`` backend (CPU)."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from eecontrol import DropoutSchedule, GradES
from tests.conftest import digits_data, make_trainer


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.relu(self.fc(x)))


class BlockNet(pl.LightningModule):
    """Digits through an input layer, 4 residual blocks and a head."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(4)])
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit_compiled(tmp_path, callbacks, steps):
    """Trains a compiled BlockNet for ``steps``; returns the graphs torch compiled."""
    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend("aot_eager")
    trainer = make_trainer(
        tmp_path, max_steps=steps, max_epochs=None, callbacks=callbacks, limit_val_batches=0
    )
    trainer.fit(torch.compile(BlockNet(), backend=counter), datamodule=digits_data(batch_size=64))
    assert trainer.global_step == steps and counter.frame_count >= 1
    return counters["stats"]["unique_graphs"]


def test_no_callback_compiles_once(tmp_path):
    assert _fit_compiled(tmp_path, [], steps=8) == 1


def test_dropout_schedule_says_what_compile_costs(tmp_path, caplog):
    # early constant: 2 rate values (p, then 0) -> 2 graphs; the set-up says 2
    cb = DropoutSchedule(p=0.2, mode="early", cutoff=0.5)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        frames = _fit_compiled(tmp_path, [cb], steps=8)
    assert cb.decisions[0].evidence["compiled_rate_values"] == 2
    assert frames == 2
    assert any("2 distinct rate value(s)" in r.getMessage() for r in caplog.records)


def test_linear_dropout_schedule_warns_before_the_recompile_limit(tmp_path):
    # early linear over 12 steps, cutoff 10: 11 distinct rates >= the limit of 8
    cb = DropoutSchedule(p=0.2, mode="early", schedule="linear", cutoff=10, cutoff_unit="steps")
    with pytest.warns(UserWarning, match=r"10 distinct rate value\(s\).*recompile_limit is 8"):
        frames = _fit_compiled(tmp_path, [cb], steps=12)
    assert cb.decisions[0].evidence["compiled_rate_values"] == 10
    assert frames >= 8  # what the warning announced: one graph per rate


def test_grades_says_what_freezing_costs_under_compile(tmp_path, caplog):
    # two of four blocks freeze at one step (a huge threshold for them): one recompile
    cb = GradES(tau={"blocks.0.fc": 1e9, "blocks.1.fc": 1e9, "default": 0.0}, grace=0.5)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        frames = _fit_compiled(tmp_path, [cb], steps=8)
    assert cb.frozen == {"blocks.0.fc": 4, "blocks.1.fc": 4}
    assert frames == 2  # the first compile and one after the freeze step
    assert any("at most 4 recompiles" in r.getMessage() for r in caplog.records)


def test_grades_warns_when_freezes_can_pass_the_recompile_limit(tmp_path):
    cb = GradES(tau={"blocks.0.fc": 1e9, "default": 0.0}, grace=0.5)
    with (
        torch._dynamo.config.patch(recompile_limit=4),
        pytest.warns(UserWarning, match=r"recompile_limit is 4.*set interval >= 2"),
    ):
        _fit_compiled(tmp_path, [cb], steps=8)
