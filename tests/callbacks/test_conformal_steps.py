"""CES in step-based runs (max_steps, streams, mid-epoch validation) and what it warns about."""

from __future__ import annotations

import warnings

import pytest
import torch
from eecontrol.recipes.regression import QuantileMLP, RegressionDataModule
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader

from eecontrol import ConformalEarlyStopping
from eecontrol.core import conformal as core
from tests.conftest import Stream, digits_data, digits_model, make_trainer


def _digits():
    dm = digits_data(batch_size=32)
    dm.setup()
    return dm


def _ces_messages(caught) -> str:
    return "\n".join(str(w.message) for w in caught if "ConformalEarlyStopping" in str(w.message))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_step_based_run_on_a_stream_stores_candidates_at_the_planned_steps(tmp_path, accumulate):
    dm = _digits()
    x_hold, y_hold = dm.val_set.tensors
    torch.manual_seed(0)
    model = digits_model()
    ces = ConformalEarlyStopping(storage_unit="steps", storage_period=5)
    trainer = make_trainer(
        tmp_path,
        max_steps=20,
        val_check_interval=5 * accumulate,  # in batches: one validation per candidate
        accumulate_grad_batches=accumulate,
        callbacks=[ces],
    )
    train = DataLoader(Stream(dm.train_set), batch_size=32)
    trainer.fit(model, train, DataLoader(dm.val_set, batch_size=64))
    assert trainer.global_step == 20
    assert ces.steps == [5, 10, 15, 20] and ces.epochs == [0, 0, 0, 0]  # one epoch: a stream
    plan = next(d for d in ces.decisions if d.action == "plan")
    assert plan.evidence["planned_candidates"] == 4 and plan.evidence["storage_unit"] == "steps"
    assert "every 5 optimizer step(s)" in plan.reason
    # each stored output equals a recomputation from its stored checkpoint
    for name, step, out in zip(ces.paths, ces.steps, ces.outputs):
        blob = torch.load(tmp_path / "ces" / name, weights_only=True)
        assert blob["step"] == step
        again = digits_model()
        again.load_state_dict(blob["state_dict"])
        again.eval()
        with torch.no_grad():
            recomputed = torch.softmax(again(x_hold), -1).double()
        assert out.shape == (len(y_hold), 10)
        assert (recomputed - out).abs().max().item() == 0.0
    assert not torch.equal(ces.outputs[0], ces.outputs[-1])  # the candidates differ
    # the conformal machinery selects among the four: the CES choice per (point, label) is
    # the argmin of hold-out loss + test loss over the stored candidates
    x_test, y_test = dm.test_set.tensors
    pred = ces.predictor(digits_model())
    test = pred.candidate_outputs(x_test)
    assert test.shape == (4, len(y_test), 10)
    result = core.ces_classification_p_values(
        pred.holdout, pred.targets, test, pred.holdout_u, None, True
    )
    holdout_loss = -torch.log(pred.holdout.gather(2, y_hold.view(1, -1, 1).expand(4, -1, 1)))
    brute = torch.argmin(holdout_loss.sum((1, 2)).view(4, 1, 1) - torch.log(test), dim=0)
    assert torch.equal(result.selected, brute)
    sets = pred.predict_set(x_test, alpha=0.1)
    assert sets[torch.arange(len(y_test)), y_test].double().mean() > 0.8


def test_epoch_storage_on_a_stream_warns_that_it_stores_one_candidate(tmp_path):
    dm = _digits()
    ces = ConformalEarlyStopping()  # epochs: the default
    trainer = make_trainer(tmp_path, max_steps=10, val_check_interval=5, callbacks=[ces])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(
            digits_model(),
            DataLoader(Stream(dm.train_set), batch_size=32),
            DataLoader(dm.val_set, batch_size=64),
        )
    text = _ces_messages(caught)
    assert ces.epochs == [0]  # the stream's one epoch end
    assert "use storage_unit='steps'" in text.replace("Use", "use")
    assert "only 1 candidate(s) stored" in text


def test_steps_unit_warm_up_as_a_fraction_of_the_run_and_bad_values(tmp_path):
    dm = _digits()
    ces = ConformalEarlyStopping(storage_unit="steps", storage_period=4, storage_start=0.5)
    make_trainer(tmp_path, max_steps=16, callbacks=[ces]).fit(digits_model(), datamodule=dm)
    assert ces.steps == [12, 16]  # 0.5 of 16 steps: a warm-up of 8; 8 itself is not > 8
    with pytest.raises(ValueError, match=r"`storage_unit` must be one of \['epochs', 'steps'\]"):
        ConformalEarlyStopping(storage_unit="validations")
    with pytest.raises(ValueError, match=r"fraction of estimated_stepping_batches in \[0.0, 1.0\)"):
        ConformalEarlyStopping(storage_unit="steps", storage_start=1.5)
    with pytest.raises(ValueError, match=r"stores no candidate in a run of 16 steps"):
        make_trainer(
            tmp_path / "e",
            max_steps=16,
            callbacks=[ConformalEarlyStopping(storage_unit="steps", storage_start=16)],
        ).fit(digits_model(), datamodule=dm)


def test_max_steps_shorter_than_the_epoch_plan_is_caught_at_setup(tmp_path):
    dm = _digits()  # 40 batches of 32 per epoch
    # max_steps=60 ends the run in epoch 1: 2 epoch ends, none past a warm-up of 3 epochs
    ces = ConformalEarlyStopping(storage_start=3)
    trainer = make_trainer(tmp_path, max_epochs=5, max_steps=60, callbacks=[ces])
    with pytest.raises(ValueError, match=r"stores no candidate in a run of 2 epochs.*max_steps=60"):
        trainer.fit(digits_model(), datamodule=dm)
    assert trainer.global_step == 0
    # a plan of one candidate is a warning, before training
    ces = ConformalEarlyStopping(storage_start=1)
    trainer = make_trainer(tmp_path, max_epochs=5, max_steps=60, callbacks=[ces])
    with pytest.warns(UserWarning, match=r"stores 1 candidate\(s\): CES selects among"):
        trainer.fit(digits_model(), datamodule=dm)
    assert ces.epochs == [1]


def _regression(n_total: int = 200) -> RegressionDataModule:
    return RegressionDataModule("concrete", n_total=n_total, n_test=60, seed=1)


@pytest.mark.parametrize("order", ["after", "before"])
def test_a_stopper_ending_the_run_early_is_reported_in_either_order(tmp_path, order):
    stop = EarlyStopping(
        monitor="train/loss", stopping_threshold=1e9, check_on_train_epoch_end=True
    )
    ces = ConformalEarlyStopping(task="quantile", storage_start=2)
    callbacks = [ces, stop] if order == "after" else [stop, ces]
    trainer = make_trainer(tmp_path, max_epochs=6, callbacks=callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(QuantileMLP(num_features=8), datamodule=_regression())
    text = _ces_messages(caught)
    assert trainer.current_epoch == 1 and ces.epochs == []  # stopped in the warm-up
    assert "training was stopped" in text and "EarlyStopping" in text
    assert "only 0 candidate(s) stored (the plan: 4)" in text
    assert ("is listed after ConformalEarlyStopping" in text) == (order == "after")


def test_a_single_output_model_for_quantile_intervals_fails_at_setup(tmp_path):
    from eecontrol.recipes.regression import RegressionMLP

    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[ConformalEarlyStopping("quantile")])
    with pytest.raises(ValueError, match=r"task='quantile' needs .* shape \(m, 2\); .*\(2,\)"):
        trainer.fit(RegressionMLP(num_features=8), datamodule=_regression())
    assert trainer.global_step == 0  # before any training

    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[ConformalEarlyStopping()])
    with pytest.raises(ValueError, match=r"logits \(m, K\) with K >= 2 classes"):
        trainer.fit(RegressionMLP(num_features=8), datamodule=_regression())
    assert trainer.global_step == 0


def test_alpha_too_small_for_the_holdout_says_so_once_with_the_smallest_alpha(tmp_path):
    dm = _regression(n_total=160)  # 40 hold-out points
    ces = ConformalEarlyStopping(task="quantile", alpha=0.02)
    model = QuantileMLP(num_features=8)
    with pytest.warns(
        UserWarning, match=r"alpha=0.02 is too small for 40 hold-out points.*0.02439"
    ):
        make_trainer(tmp_path, max_epochs=2, callbacks=[ces]).fit(model, datamodule=dm)
    assert ces.outputs[0].shape == (40, 2)
    pred = ces.predictor(QuantileMLP(num_features=8))
    x = dm.test_set.tensors[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        iv = pred.predict_interval(x, alpha=0.02)
        pred.predict_interval(x, alpha=0.02)
    assert bool(torch.isinf(iv.width()).all())  # the whole line, as the theory says
    said = [w for w in caught if "too small for 40" in str(w.message)]
    assert len(said) == 1  # once per predictor and level
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*too small.*")
        assert bool(torch.isfinite(pred.predict_interval(x, alpha=0.1).width()).all())


class SwappedQuantiles(QuantileMLP):
    """Trained to return (upper, lower): the loss reads column 0 as the high level."""

    def _loss(self, batch):
        x, y = batch
        u = y.unsqueeze(-1) - self(x)
        levels = torch.tensor(self.quantiles[::-1], dtype=u.dtype)
        return torch.maximum(levels * u, (levels - 1) * u).sum(-1).mean()


def test_swapped_quantile_columns_warn(tmp_path):
    torch.manual_seed(0)
    ces = ConformalEarlyStopping(task="quantile")
    with pytest.warns(UserWarning, match=r"first output column exceeds its second .* swapped"):
        make_trainer(tmp_path, max_epochs=6, callbacks=[ces]).fit(
            SwappedQuantiles(num_features=8), datamodule=_regression()
        )
    assert (ces.outputs[-1][:, 0] > ces.outputs[-1][:, 1]).double().mean() > 0.5
    torch.manual_seed(0)
    right = ConformalEarlyStopping(task="quantile")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*swapped.*")
        make_trainer(tmp_path / "ok", max_epochs=6, callbacks=[right]).fit(
            QuantileMLP(num_features=8), datamodule=_regression()
        )


def test_fit_twice_records_the_new_plan_and_the_new_candidates(tmp_path):
    dm = _digits()
    ces = ConformalEarlyStopping()
    model = digits_model()
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[ces])
    trainer.fit(model, datamodule=dm)
    trainer.fit_loop.max_epochs = 4  # continued training on the same Trainer
    trainer.fit(model, datamodule=dm)
    assert ces.epochs == [0, 1, 2, 3]
    plans = [d for d in ces.decisions if d.action == "plan"]
    found = [d for d in ces.decisions if d.action == "candidates"]
    assert [p.evidence["planned_candidates"] for p in plans] == [2, 4]
    assert [c.evidence["candidates"] for c in found] == [2, 4]
