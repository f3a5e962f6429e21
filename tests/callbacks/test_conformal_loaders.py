"""CES with plain Lightning loaders, any batch layout, quantile regression, and what it warns about."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from eecontrol.recipes.regression import QuantileMLP, RegressionDataModule, RegressionMLP
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler, TensorDataset

from eecontrol import ConformalEarlyStopping, ConformalPredictor
from tests.conftest import make_trainer


def _concrete(seed: int = 1) -> RegressionDataModule:
    dm = RegressionDataModule("concrete", n_total=200, n_test=60, seed=seed)
    dm.setup()
    return dm


def _loaders(dm: RegressionDataModule, **val_kwargs) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(dm.train_set, batch_size=25, shuffle=True)
    return train, DataLoader(dm.val_set, **{"batch_size": 16, **val_kwargs})


def test_plain_loaders_shuffled_and_dropping_the_last_batch_give_the_whole_holdout_in_order(
    tmp_path,
):
    dm = _concrete()
    x_hold, y_hold = dm.val_set.tensors
    assert len(y_hold) % 16 != 0  # drop_last really drops points in this set-up
    train, val = _loaders(dm, shuffle=True, drop_last=True)
    ces = ConformalEarlyStopping(task="regression")
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[ces])
    trainer.fit(RegressionMLP(num_features=8), train, val)
    assert ces.epochs == [0, 1]
    assert ces.outputs[0].shape == (len(y_hold),)  # every hold-out point, not 16 * k
    assert torch.equal(ces.targets, y_hold)  # in dataset order, not the shuffled one
    again = ces.predictor(RegressionMLP(num_features=8)).candidate_outputs(x_hold)
    torch.testing.assert_close(again, torch.stack(ces.outputs), rtol=1e-5, atol=1e-6)
    plan = ces.decisions[0]
    assert plan.action == "plan" and plan.evidence["holdout_points"] == len(y_hold)


def test_subset_sampler_is_honoured_and_custom_samplers_refused(tmp_path):
    dm = _concrete()
    full = TensorDataset(
        *(torch.cat([a, b]) for a, b in zip(dm.train_set.tensors, dm.val_set.tensors))
    )
    n_train = len(dm.train_set)
    hold_idx = list(range(len(full) - 1, n_train - 1, -1))  # reversed on purpose
    val = DataLoader(full, batch_size=16, sampler=SubsetRandomSampler(hold_idx))
    train = DataLoader(full, batch_size=25, sampler=SubsetRandomSampler(range(n_train)))
    ces = ConformalEarlyStopping(task="regression")
    make_trainer(tmp_path, max_epochs=1, callbacks=[ces]).fit(RegressionMLP(), train, val)
    assert torch.equal(ces.targets, dm.val_set.tensors[1])  # the subset, sorted by index

    class EveryOther(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(range(0, len(full), 2))

        def __len__(self):
            return len(full) // 2

    bad = DataLoader(full, batch_size=16, sampler=EveryOther())
    trainer = make_trainer(
        tmp_path / "bad", max_epochs=1, callbacks=[ConformalEarlyStopping("regression")]
    )
    with pytest.raises(ValueError, match=r"custom sampler \(EveryOther\)"):
        trainer.fit(RegressionMLP(), train, bad)


class _DictSet(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "labels": self.y[i]}


class _DictMLP(RegressionMLP):
    """Hugging Face style: dict batches, ``forward(**inputs)``."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net(features).squeeze(-1)

    def _loss(self, batch):
        return torch.nn.functional.mse_loss(
            self(**{"features": batch["features"]}), batch["labels"]
        )


def test_dict_batches_work_by_default_and_any_layout_through_the_hooks(tmp_path):
    dm = _concrete()
    x_hold, y_hold = dm.val_set.tensors
    train = DataLoader(_DictSet(*dm.train_set.tensors), batch_size=25, shuffle=True)
    val = DataLoader(_DictSet(x_hold, y_hold), batch_size=32)
    ces = ConformalEarlyStopping(task="regression")
    make_trainer(tmp_path, max_epochs=1, callbacks=[ces]).fit(_DictMLP(), train, val)
    assert torch.equal(ces.targets, y_hold)
    pred = ces.predictor(_DictMLP())
    iv = pred.predict_interval({"features": dm.test_set.tensors[0]}, alpha=0.2)
    assert torch.isfinite(iv.width()).all()

    class Swapped(RegressionMLP):  # batches (y, x): only the hooks know
        def ces_inputs(self, batch):
            return batch[1]

        def ces_targets(self, batch):
            return batch[0]

        def _loss(self, batch):
            return torch.nn.functional.mse_loss(self(batch[1]), batch[0])

    swap = TensorDataset(y_hold, x_hold)
    ces = ConformalEarlyStopping(task="regression")
    train = DataLoader(TensorDataset(*reversed(dm.train_set.tensors)), batch_size=25)
    make_trainer(tmp_path / "h", max_epochs=1, callbacks=[ces]).fit(
        Swapped(), train, DataLoader(swap, batch_size=32)
    )
    assert torch.equal(ces.targets, y_hold) and ces.outputs[0].shape == y_hold.shape


def test_quantile_regression_run_all_methods_and_a_moved_run_dir(tmp_path):
    dm = RegressionDataModule("concrete", n_total=300, n_test=100, seed=2)
    run = tmp_path / "run"
    ces = ConformalEarlyStopping(task="quantile", storage_period=2, quantiles=(0.05, 0.95))
    trainer = make_trainer(run, max_epochs=4, callbacks=[ces])
    model = QuantileMLP(num_features=8)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert ces.epochs == [1, 3] and ces.outputs[0].shape == (75, 2)
    evaluate = next(d for d in ces.decisions if d.action == "evaluate").evidence
    assert {"ces_coverage", "ces_width", "naive_width"} <= set(evaluate)
    x, y = dm.test_set.tensors
    # a moved run directory still loads (candidate paths are relative)
    moved = tmp_path / "elsewhere"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    widths = {}
    for method in ("ces", "naive", "naive_theory", "data_splitting", "full"):
        pred = ConformalPredictor.from_run_dir(moved, QuantileMLP(num_features=8), method=method)
        iv = pred.predict_interval(x, alpha=0.1, union=method == "ces")
        cover = ((iv.lower <= y) & (y <= iv.upper)).double().mean()
        assert cover > 0.7, (method, cover)
        widths[method] = float(iv.width().mean())
        if method == "ces":
            assert iv.fallback is not None
            for i in range(len(y)):
                pieces = iv.union(i)
                assert pieces[0][0] == iv.lower[i] and pieces[-1][1] == iv.upper[i]
    assert widths["naive_theory"] > widths["naive"]  # the corrected level is smaller
    with pytest.raises(ValueError, match=r"`quantiles` \[0.1, 0.9\] differs from the module's"):
        make_trainer(
            tmp_path / "q", callbacks=[ConformalEarlyStopping("quantile", quantiles=(0.1, 0.9))]
        ).fit(QuantileMLP(num_features=8), datamodule=dm)


def test_storage_start_skips_the_warm_up_epochs_and_names_an_empty_schedule(tmp_path):
    dm = RegressionDataModule("concrete", n_total=300, n_test=100, seed=2)
    ces = ConformalEarlyStopping(task="quantile", storage_period=2, storage_start=3)
    model = QuantileMLP(num_features=8)
    make_trainer(tmp_path / "w", max_epochs=6, callbacks=[ces]).fit(model, datamodule=dm)
    # epochs (1-based) 2, 4, 6 are on the schedule; the warm-up of 3 drops 2
    assert ces.epochs == [3, 5] and len(ces.outputs) == len(ces.paths) == 2
    saved = sorted(p.name for p in (tmp_path / "w").rglob("candidate_epoch*.pt"))
    assert saved == ["candidate_epoch0003.pt", "candidate_epoch0005.pt"]
    x, y = dm.test_set.tensors
    iv = ces.predictor(model).predict_interval(x, alpha=0.1)  # selects among the two
    assert iv.lower.shape == y.shape and bool((iv.lower <= iv.upper).all())
    plan = next(d for d in ces.decisions if d.action == "plan")
    assert "after a warm-up of 3 epoch(s)" in plan.reason
    assert plan.evidence["planned_candidates"] == 2
    assert ces.state_dict()["config"]["storage_start"] == 3
    with pytest.raises(
        ValueError, match=r"`storage_start`=6 \(6 epochs\) .* must be in \[0, 5\] epochs"
    ):
        make_trainer(
            tmp_path / "e",
            max_epochs=6,
            callbacks=[ConformalEarlyStopping("quantile", storage_period=2, storage_start=6)],
        ).fit(QuantileMLP(num_features=8), datamodule=dm)
    with pytest.raises(ValueError, match=r"`storage_period` must be in \[1, 6\]"):
        make_trainer(
            tmp_path / "p",
            max_epochs=6,
            callbacks=[ConformalEarlyStopping("quantile", storage_period=7)],
        ).fit(QuantileMLP(num_features=8), datamodule=dm)
    # a float is a fraction of max_epochs (floor): 0.5 of 6 epochs is a warm-up of 3
    half = ConformalEarlyStopping(task="quantile", storage_period=2, storage_start=0.5)
    make_trainer(tmp_path / "f", max_epochs=6, callbacks=[half]).fit(
        QuantileMLP(num_features=8), datamodule=dm
    )
    assert half.epochs == [3, 5]
    for bad, message in (
        (-1, r"\[0, inf\)"),
        (5.0, r"epochs in \[0, inf\) or a fraction of max_epochs in \[0.0, 1.0\), got 5.0"),
        (float("nan"), r"\[0.0, 1.0\)"),
        ("3", "integer"),
    ):
        with pytest.raises(ValueError, match=r"`storage_start` must be .*" + message):
            ConformalEarlyStopping("quantile", storage_start=bad)


def test_a_resume_that_moves_a_fractional_warm_up_warns(tmp_path):
    dm = RegressionDataModule("concrete", n_total=300, n_test=100, seed=2)
    run = tmp_path / "r"

    def fit(max_epochs: int, ces: ConformalEarlyStopping, ckpt_path: str | None = None):
        save = ModelCheckpoint(dirpath=run / "ckpt", save_last=True)
        trainer = make_trainer(
            run, max_epochs=max_epochs, callbacks=[ces, save], enable_checkpointing=True
        )
        trainer.fit(QuantileMLP(num_features=8), datamodule=dm, ckpt_path=ckpt_path)

    first = ConformalEarlyStopping(task="quantile", storage_start=0.5)
    fit(4, first)
    assert first.epochs == [2, 3]
    last = run / "ckpt" / "last.ckpt"
    assert last.exists()
    again = ConformalEarlyStopping(task="quantile", storage_start=0.5)
    with pytest.warns(UserWarning, match=r"warm-up of 2 epoch\(s\).* now gives 4"):
        fit(8, again, str(last))
    # resumed past epoch 0: the checkpoint's candidates, then the new schedule's (e + 1 > 4)
    assert again.epochs == [2, 3, 4, 5, 6, 7]
    same = ConformalEarlyStopping(task="quantile", storage_start=0.5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*warm-up.*")
        fit(8, same, str(run / "ckpt" / "last.ckpt"))  # same max_epochs: no warning


def test_bad_candidates_dir_truncated_candidate_and_bad_max_epochs(tmp_path):
    dm = _concrete()
    file = tmp_path / "not_a_dir"
    file.write_text("x")
    ces = ConformalEarlyStopping(task="regression", candidates_dir=str(file))
    with pytest.raises(ValueError, match=r"`candidates_dir` .* is an existing file"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[ces]).fit(RegressionMLP(), datamodule=dm)
    assert ces.epochs == []  # failed at setup, before any training
    ces = ConformalEarlyStopping(task="regression")
    with pytest.raises(ValueError, match=r"`max_epochs` must be an integer .* got 'abc'"):
        make_trainer(tmp_path, max_epochs="abc", callbacks=[ces]).fit(
            RegressionMLP(), datamodule=dm
        )
    ces = ConformalEarlyStopping(task="regression")
    make_trainer(tmp_path, max_epochs=2, callbacks=[ces]).fit(RegressionMLP(), datamodule=dm)
    victim = tmp_path / "ces" / "candidate_epoch0001.pt"
    assert victim.exists()
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(
        ValueError, match=r"cannot read CES candidate file .*candidate_epoch0001\.pt"
    ):
        ConformalPredictor.from_run_dir(tmp_path, RegressionMLP()).predict_interval(
            dm.test_set.tensors[0], 0.1
        )


@pytest.mark.parametrize(
    "monitor", ["train_holdout_loss", "trainval_loss", "trainValLoss", "val/loss"]
)
def test_metric_names_that_merely_start_with_train_are_hold_out_metrics(tmp_path, monitor):
    es = EarlyStopping(monitor=monitor)
    trainer = make_trainer(tmp_path, callbacks=[ConformalEarlyStopping("regression"), es])
    with pytest.raises(ValueError, match=rf"EarlyStopping\(monitor='{monitor}'\)"):
        trainer.fit(RegressionMLP(), datamodule=_concrete())


class _StopsOnValLoss(Callback):
    """A user callback with no `monitor` attribute that stops on the hold-out loss."""

    def on_validation_end(self, trainer, pl_module):
        if trainer.current_epoch >= 1:
            trainer.should_stop = True


class _HandPlateau(RegressionMLP):
    """Steps a ReduceLROnPlateau by hand on the hold-out loss and sets should_stop itself."""

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        return opt

    def on_validation_epoch_end(self):
        self.plateau.step(float("inf") if self.current_epoch == 0 else 1.0)


def test_warns_naming_what_it_cannot_check_and_records_what_it_checked(tmp_path):
    ces = ConformalEarlyStopping(task="regression")
    trainer = make_trainer(
        tmp_path,
        max_epochs=4,
        callbacks=[ces, _StopsOnValLoss(), EarlyStopping(monitor="train/loss", patience=50)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_HandPlateau(), datamodule=_concrete())
    text = "\n".join(str(w.message) for w in caught if "ConformalEarlyStopping" in str(w.message))
    assert "callback _StopsOnValLoss" in text
    assert "ReduceLROnPlateau (`plateau`)" in text
    assert "learning rate changed" in text
    assert "stopped at epoch 1 of 4" in text
    checked = ces.decisions[0].evidence["callbacks_checked"]
    assert "_StopsOnValLoss: unknown: warned" in checked
    assert "EarlyStopping(monitor=train/loss): training metric" in checked
    assert "_HandPlateau.plateau: hand-stepped plateau: warned" in checked
    assert ces.decisions[0].evidence["callbacks_warned"] == 2
