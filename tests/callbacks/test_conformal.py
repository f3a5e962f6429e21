"""ConformalEarlyStopping and ConformalPredictor on real training runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eecontrol.recipes.outliers import DigitsAutoencoder, DigitsOutlierDataModule
from eecontrol.recipes.regression import RegressionDataModule, RegressionMLP
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from eecontrol import ConformalEarlyStopping, ConformalPredictor
from eecontrol.callbacks._control import DECISIONS_FILE
from eecontrol.testing import check_callback_conformance
from tests.conftest import (
    CrashAtEpoch,
    digits_data,
    digits_model,
    fit_on_two_processes,
    make_trainer,
)


def _fit_digits(tmp_path, epochs=3, **kwargs):
    ces = ConformalEarlyStopping(task="classification", **kwargs)
    model = digits_model()
    dm = digits_data()
    trainer = make_trainer(tmp_path, max_epochs=epochs, limit_train_batches=4, callbacks=[ces])
    trainer.fit(model, datamodule=dm)
    return ces, model, dm, trainer


def test_conformance(tmp_path):
    ces, *_ = _fit_digits(tmp_path, epochs=2)
    check_callback_conformance(
        ConformalEarlyStopping,
        valid=[{"task": "classification"}, {"task": "regression"}, {"task": "outlier"}],
        invalid=[
            (
                {"task": "ranking"},
                "`task`",
                "['classification', 'regression', 'quantile', 'outlier']",
            ),
            ({"storage_period": 0}, "`storage_period`", "[1, inf)"),
            ({"storage_period": 1.5}, "`storage_period`", "integer"),
            ({"alpha": 0.0}, "`alpha`", "(0.0, 1.0)"),
            ({"alpha": 1.0}, "`alpha`", "(0.0, 1.0)"),
            ({"alpha": float("nan")}, "`alpha`", "(0.0, 1.0)"),
            ({"holdout_batch_size": 0}, "`holdout_batch_size`", "[1, inf)"),
            ({"aps_seed": -1}, "`aps_seed`", "[0, inf)"),
            ({"train_metric_prefixes": "train"}, "`train_metric_prefixes`", "list of prefixes"),
        ],
        after_fit=(ces, {"task": "classification"}),
    )


def test_candidates_are_stored_and_reproducible(tmp_path):
    ces, model, dm, _ = _fit_digits(tmp_path, epochs=4, storage_period=2)
    assert ces.epochs == [1, 3]
    assert [d.action for d in ces.decisions] == ["plan", "candidates"]
    x_hold, y_hold = dm.val_set.tensors
    record = ces.record()
    assert record["outputs"].shape == (2, len(y_hold), 10)
    assert torch.equal(record["targets"], y_hold)
    assert record["root"] == str((tmp_path / "ces").resolve())
    for path in record["paths"]:
        assert not Path(path).is_absolute()  # relative to the candidates dir (a run dir can move)
        blob = torch.load(tmp_path / "ces" / path, weights_only=True)
        assert set(blob) == {"state_dict", "epoch", "step"}
    # the vmap-batched forward of the stored checkpoints reproduces the stored outputs
    pred = ces.predictor(digits_model())
    again = pred.candidate_outputs(x_hold)
    torch.testing.assert_close(again, record["outputs"], rtol=1e-5, atol=1e-6)
    # the last candidate is the trained model itself
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            again[-1], torch.softmax(model(x_hold), -1).double(), rtol=1e-5, atol=1e-6
        )
    # files written at the end of fit
    assert (tmp_path / "ces" / "holdout.pt").exists()
    listed = json.loads((tmp_path / "ces" / "candidates.json").read_text())
    assert [c["epoch"] for c in listed] == [1, 3]


def test_predictor_from_run_dir_and_all_methods(tmp_path):
    ces, _, dm, _ = _fit_digits(tmp_path, epochs=3)
    x_test, y_test = dm.test_set.tensors
    direct = ces.predictor(digits_model()).p_values(x_test)
    loaded = ConformalPredictor.from_run_dir(tmp_path, digits_model()).p_values(x_test)
    torch.testing.assert_close(direct, loaded)
    sizes = {}
    for method in ("ces", "naive", "naive_theory", "data_splitting", "full"):
        pred = ces.predictor(digits_model(), method=method)
        sets = pred.predict_set(x_test, alpha=0.1)
        assert sets.shape == (len(y_test), 10)
        coverage = sets[torch.arange(len(y_test)), y_test].double().mean()
        assert coverage > 0.7, (method, coverage)
        sizes[method] = float(sets.sum(1).double().mean())
    assert sizes["naive_theory"] >= sizes["naive"]  # a smaller level, larger sets
    with pytest.raises(ValueError, match="task='regression'"):
        ces.predictor(digits_model()).predict_interval(x_test, 0.1)


def test_test_split_summary_decision(tmp_path):
    ces, model, dm, trainer = _fit_digits(tmp_path, epochs=3)
    trainer.test(model, datamodule=dm, verbose=False)
    evaluate = next(d for d in ces.decisions if d.action == "evaluate")
    assert set(evaluate.evidence) == {"ces_coverage", "ces_size", "naive_coverage", "naive_size"}
    assert 0.0 < evaluate.evidence["ces_coverage"] <= 1.0
    journal = [
        json.loads(x)["action"] for x in (tmp_path / DECISIONS_FILE).read_text().splitlines()
    ]
    assert journal == ["plan", "candidates", "evaluate"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"callbacks": [EarlyStopping(monitor="val/loss")]},
            r"EarlyStopping\(monitor='val/loss'\)",
        ),
        ({"max_epochs": -1, "max_steps": -1}, "fixed in advance"),
    ],
)
def test_refuses_training_that_looks_at_the_holdout(tmp_path, extra, message):
    callbacks = [ConformalEarlyStopping(), *extra.pop("callbacks", [])]
    trainer = make_trainer(
        tmp_path, limit_train_batches=2, callbacks=callbacks, **{"max_epochs": 2, **extra}
    )
    with pytest.raises(ValueError, match=message):
        trainer.fit(digits_model(), datamodule=digits_data())


def test_refuses_reduce_on_plateau_on_holdout_but_allows_training_signals(tmp_path):
    class Plateau(type(digits_model())):
        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters())
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}

    from eecontrol.recipes.digits import DigitsCNN

    bad = Plateau(net=DigitsCNN())
    bad.monitor = "val/loss"
    trainer = make_trainer(
        tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[ConformalEarlyStopping()]
    )
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau\(monitor='val/loss'\)"):
        trainer.fit(bad, datamodule=digits_data())
    ok = Plateau(net=DigitsCNN())
    ok.monitor = "train/loss_epoch"
    es = EarlyStopping(monitor="train/loss_epoch", patience=100)
    trainer = make_trainer(
        tmp_path / "ok",
        max_epochs=2,
        limit_train_batches=2,
        callbacks=[ConformalEarlyStopping(), es],
    )
    trainer.fit(ok, datamodule=digits_data())


def test_resume_keeps_all_saved_candidates(tmp_path):
    def trainer_for(callbacks):
        return make_trainer(
            tmp_path,
            max_epochs=5,
            limit_train_batches=3,
            callbacks=callbacks,
            enable_checkpointing=True,
        )

    ces = ConformalEarlyStopping()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer_for([ces, ckpt, CrashAtEpoch(3)]).fit(digits_model(), datamodule=digits_data())
    assert ces.epochs == [0, 1, 2]
    before = torch.stack(ces.outputs).clone()

    resumed = ConformalEarlyStopping()
    trainer_for([resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]).fit(
        digits_model(), datamodule=digits_data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert resumed.epochs == [0, 1, 2, 3, 4]
    assert torch.equal(torch.stack(resumed.outputs[:3]), before)
    assert [d.action for d in resumed.decisions] == ["plan", "candidates"]
    assert all(
        torch.load(tmp_path / "ces" / p, weights_only=True)["epoch"] == e
        for p, e in zip(resumed.paths, resumed.epochs)
    )


def test_resume_with_missing_candidate_files_is_an_error(tmp_path):
    ces = ConformalEarlyStopping()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        callbacks=[ces, ckpt],
        enable_checkpointing=True,
    ).fit(digits_model(), datamodule=digits_data())
    (tmp_path / "ces" / "candidate_epoch0000.pt").unlink()
    trainer = make_trainer(
        tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[ConformalEarlyStopping()]
    )
    with pytest.raises(ValueError, match="candidate checkpoints of the resumed run are missing"):
        trainer.fit(
            digits_model(), datamodule=digits_data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )


def test_mismatched_model_is_a_clear_error(tmp_path):
    ces, *_ = _fit_digits(tmp_path, epochs=1)
    from eecontrol.recipes.digits import DigitsClassifier, DigitsMLP

    with pytest.raises(ValueError, match="does not match the stored candidates"):
        ces.predictor(DigitsClassifier(net=DigitsMLP())).p_values(torch.zeros(2, 1, 8, 8))


def test_regression_run_on_concrete(tmp_path):
    ces = ConformalEarlyStopping(task="regression", storage_period=2)
    dm = RegressionDataModule("concrete", n_total=200, n_test=50, seed=1)
    trainer = make_trainer(tmp_path, max_epochs=8, callbacks=[ces])
    trainer.fit(RegressionMLP(num_features=8), datamodule=dm)
    x, y = dm.test_set.tensors
    pred = ces.predictor(RegressionMLP(num_features=8))
    iv = pred.predict_interval(x, alpha=0.1, union=True)
    assert torch.isfinite(iv.width()).all() and (iv.width() > 0).all()
    for i in range(len(y)):
        pieces = iv.union(i)
        assert pieces[0][0] == iv.lower[i] and pieces[-1][1] == iv.upper[i]
    naive = ces.predictor(RegressionMLP(num_features=8), method="naive").predict_interval(x, 0.1)
    assert naive.lower.shape == iv.lower.shape


def test_outlier_run_gives_valid_looking_p_values(tmp_path):
    ces = ConformalEarlyStopping(task="outlier")
    dm = DigitsOutlierDataModule(seed=0)
    torch.manual_seed(0)  # independent of the tests that ran before
    model = DigitsAutoencoder()
    trainer = make_trainer(tmp_path, max_epochs=12, callbacks=[ces])
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    x, _ = dm.test_set.tensors
    p = ces.predictor(DigitsAutoencoder()).p_values(x)
    n = len(dm.val_set)
    assert p.min() >= 1 / (n + 1) and p.max() <= 1
    evaluate = next(d for d in ces.decisions if d.action == "evaluate").evidence
    assert evaluate["ces_power"] > evaluate["ces_type1"] + 0.1  # outliers get smaller p-values


class _Report(Callback):
    def __init__(self, root):
        self.root = str(root)

    def on_fit_end(self, trainer, pl_module):
        ces = next(c for c in trainer.callbacks if isinstance(c, ConformalEarlyStopping))
        torch.save(
            {
                "epochs": ces.epochs,
                "outputs": torch.stack(ces.outputs),
                "actions": [d.action for d in ces.decisions],
            },
            f"{self.root}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.timeout(180)
def test_ddp_ranks_store_identical_candidates(tmp_path):
    ces = ConformalEarlyStopping()
    callbacks = [ces, _Report(tmp_path)]
    fit_on_two_processes(
        tmp_path, callbacks, max_epochs=2, limit_train_batches=2, limit_val_batches=1
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["epochs"] == r1["epochs"] == [0, 1]
    assert torch.equal(r0["outputs"], r1["outputs"])
    assert (
        r0["outputs"].shape[1] == len(digits_data().__class__().setup() or [])
        or r0["outputs"].shape[1] == 270
    )
    assert r0["actions"] == r1["actions"] == ["plan", "candidates"]
