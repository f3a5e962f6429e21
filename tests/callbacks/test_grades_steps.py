"""GradES in step-based settings (issue 23 items 2 and 9): manual optimization with one and
two optimizers (the grace period and the readings in training batches), gradients as
``optimizer.step()`` receives them under manual clipping, and logging once per optimizer
step at the loggers' cadence. A tiny random Llama classifier on digit tokens."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from eecontrol import GradES
from tests.callbacks.llm_setting import TinyLlama, loaders
from tests.conftest import count_log_calls, csv_lines, make_trainer


class FrozenPerBatch(Callback):
    """Records, after every training batch, the batch index and the frozen count."""

    def __init__(self, grades: GradES) -> None:
        self.grades = grades
        self.frozen: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.frozen.append(len(self.grades.frozen))


class GradientL1(Callback):
    """Float64 sum |grad| of every GradES component: after backward (before any clipping)
    and at the optimizer step (what GradES reads); must come after GradES in the list."""

    def __init__(self, grades: GradES, check: bool = True) -> None:
        self.grades = grades
        self.check = check
        self.after_backward: list[dict[str, float]] = []
        self.at_step: list[dict[str, float]] = []

    def _l1(self) -> dict[str, float]:
        return {
            c.name: sum(float(p.grad.double().abs().sum()) for p in c.params if p.grad is not None)
            for c in self.grades._components
        }

    def on_after_backward(self, trainer, pl_module):
        self.after_backward.append(self._l1())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.at_step.append(self._l1())
        if not self.check:
            return
        read = self.grades.last_values
        assert read and set(read) == set(self.at_step[-1])
        for name, value in read.items():
            assert value == pytest.approx(self.at_step[-1][name], rel=1e-6)


@pytest.mark.parametrize("optimizers", [1, 2])
def test_manual_optimization_places_the_grace_period_in_training_batches(tmp_path, optimizers):
    # 24 batches (8 x 3 epochs), grace 0.5: the first possible freeze is at batch 12 (the
    # threshold is huge, so every component freezes there and the run stops), whatever
    # number of optimizer.step() calls a batch makes (global_step: 24 or 48).
    cb = GradES(tau=1e9, grace=0.5)
    rec = FrozenPerBatch(cb)
    train, val = loaders("map")
    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[cb, rec], limit_val_batches=0)
    trainer.fit(TinyLlama(manual=True, optimizers=optimizers), train, val)
    setup = cb.decisions[0]
    assert setup.action == "setup" and setup.evidence["total_steps"] == 24
    assert setup.evidence["grace_step"] == 12 and "training batches" in setup.evidence["unit"]
    assert len(rec.frozen) == 13  # batches 0-12 ran, then the all-frozen stop
    assert rec.frozen[:12] == [0] * 12 and rec.frozen[12] == len(cb.components) > 0
    assert set(cb.frozen.values()) == {12}  # in batches
    freezes = [d for d in cb.decisions if d.action == "freeze"]
    assert {d.step for d in freezes} == {12 * optimizers}  # decisions keep global_step
    assert cb.decisions[-1].action == "stop" and trainer.global_step == 13 * optimizers


def test_two_optimizers_read_each_component_once_per_batch_at_its_optimizer(tmp_path):
    # The classification head has its own optimizer; with patterns the head is watched too,
    # and it is read at the head optimizer's step (after its backward), the blocks at the
    # backbone optimizer's step: once per batch each, never "no gradient".
    cb = GradES(tau=0.0, grace=0.0, patterns=["*_proj", "score"])
    rec = GradientL1(cb, check=False)
    train, val = loaders("map")
    trainer = make_trainer(
        tmp_path, max_epochs=1, callbacks=[cb, rec], limit_val_batches=0, limit_train_batches=4
    )
    trainer.fit(TinyLlama(manual=True, optimizers=2), train, val)
    assert trainer.global_step == 8 and len(rec.at_step) == 8  # two optimizer steps a batch
    assert "net.score" in cb.components and len(cb.last_values) == len(cb.components)
    assert all(v is not None and v > 0 for v in cb.last_values.values())
    assert cb._stats is not None and not cb._stats.failures
    backbone_step, head_step = rec.at_step[-2], rec.at_step[-1]  # the last batch
    for name, value in cb.last_values.items():
        expected = (head_step if name == "net.score" else backbone_step)[name]
        assert value == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("manual", [False, True])
def test_statistic_is_read_from_the_gradient_the_optimizer_step_receives(tmp_path, manual):
    # Automatic optimization: read before Lightning's gradient_clip_val clipping (the
    # gradient after backward). Manual optimization: after the module's own
    # self.clip_gradients, as optimizer.step() receives it (the docstring says so).
    cb = GradES(tau=0.0, grace=0.0)
    rec = GradientL1(cb)
    train, val = loaders("map")
    kwargs = {} if manual else {"gradient_clip_val": 0.01}
    trainer = make_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=0,
        callbacks=[cb, rec],
        **kwargs,
    )
    trainer.fit(TinyLlama(manual=manual, clip=0.01 if manual else None), train, val)
    assert len(rec.at_step) == 4 == len(rec.after_backward)
    for before, at in zip(rec.after_backward, rec.at_step):
        total_before, total_at = sum(before.values()), sum(at.values())
        if manual:  # clipped to norm 0.01 before the step: far smaller than after backward
            assert total_at < 0.5 * total_before
        else:
            assert total_at == pytest.approx(total_before, rel=1e-12)
    assert "self.clip_gradients" in GradES.__doc__


def test_fractions_are_logged_once_per_optimizer_step_at_the_loggers_cadence(tmp_path):
    cb = GradES(tau=0.0, grace=0.5)
    module = TinyLlama()
    calls = count_log_calls(module)
    train, val = loaders("map")
    trainer = make_trainer(
        tmp_path,
        max_steps=8,
        max_epochs=None,
        accumulate_grad_batches=2,
        callbacks=[cb],
        limit_val_batches=0,
        logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=2,
    )
    trainer.fit(module, train, val)
    assert trainer.global_step == 8
    # self.log for Lightning's progress bar only when the frozen count changes (once: 0)
    assert [c for c in calls if c.startswith("grades/")] == ["grades/frozen_fraction"]
    lines = csv_lines(tmp_path)
    header = lines[0].split(",")
    step_col = header.index("step")
    for key in ("grades/frozen_fraction", "grades/trainable_fraction"):
        col = header.index(key)
        steps = [int(r.split(",")[step_col]) for r in lines[1:] if r.split(",")[col]]
        assert steps == [0, 2, 4, 6]
    comp = f"grades/grad_l1/{cb.components[0]}"
    col = header.index(comp)
    assert [int(r.split(",")[step_col]) for r in lines[1:] if r.split(",")[col]] == [4, 6]


def test_freezing_under_manual_two_optimizers_keeps_frozen_weights(tmp_path):
    cb = GradES(tau=1e9, grace=0.5, max_frozen_ratio=1.0)
    module = TinyLlama(manual=True, optimizers=2)
    train, val = loaders("map")
    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[cb], limit_val_batches=0)
    snapshot: dict[str, torch.Tensor] = {}

    class Snap(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            params = dict(pl_module.named_parameters())
            for info in cb._frozen.values():
                for n in info["params"]:
                    snapshot.setdefault(n, params[n].detach().clone())
                    assert torch.equal(snapshot[n], params[n])

    trainer.callbacks.append(Snap())
    trainer.fit(module, train, val)
    assert snapshot and len(snapshot) >= len(cb.components)
