"""``OptunaPruning``: real digits training reporting to a real Optuna study (SQLite)."""

from __future__ import annotations

import io
from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest
import torch
from eecontrol.recipes.digits import DigitsClassifier, DigitsCNN, DigitsDataModule
from optuna.trial import TrialState

from eecontrol.sweep.liveness import OWNER_ATTR
from eecontrol.sweep.trial import PRUNED_ATTR, STORAGE_ENV, OptunaPruning, pruning_callbacks

PRUNER = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.99, "n_warmup_steps": 1}


def _study(tmp_path: Path) -> tuple[str, optuna.Study, optuna.Trial]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    return url, study, study.ask()


def _fit(tmp_path: Path, callback: OptunaPruning, **trainer_kw) -> pl.Trainer:
    pl.seed_everything(0)
    kw = {
        "max_epochs": 4,
        "limit_train_batches": 3,
        "limit_val_batches": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        **trainer_kw,
    }
    trainer = pl.Trainer(callbacks=[callback], **kw)
    model = DigitsClassifier(DigitsCNN(hidden=16), optimizer=None)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    return trainer


def test_reports_every_validation_and_stops_when_pruned(tmp_path):
    url, study, trial = _study(tmp_path)
    cb = OptunaPruning("val/acc", "s", trial.number, storage=url, pruner=PRUNER)
    trainer = _fit(tmp_path, cb, val_check_interval=0.5)  # two validations per epoch
    frozen = study._storage.get_trial(trial._trial_id)
    # validation indexes, not epochs: 0 is below the threshold but in warm-up, 1 prunes
    assert sorted(frozen.intermediate_values) == [0, 1]
    assert frozen.system_attrs[PRUNED_ATTR] == 1 and OWNER_ATTR in frozen.system_attrs
    assert frozen.state == TrialState.RUNNING  # the sweeper tells PRUNED, not the job
    assert trainer.should_stop and cb.stopped_epoch == 0 and trainer.global_step < 12
    [stop] = cb.decisions
    assert stop.action == "stop" and "ThresholdPruner pruned trial 0 at check 1" in stop.reason
    assert stop.evidence["value"] == pytest.approx(frozen.intermediate_values[1])
    assert cb.best_so_far == pytest.approx(max(frozen.intermediate_values.values()))
    assert (tmp_path / "decisions.jsonl").read_text().count('"stop"') == 1
    # the state is primitives only and survives torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save(cb.state_dict(), buf)
    buf.seek(0)
    again = OptunaPruning("val/acc", "s", trial.number, storage=url, pruner=PRUNER)
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert again.stopped_epoch == 0 and again._checks == 2 and again.decisions == cb.decisions


def test_global_step_reports_and_no_stop_in_fast_dev_run(tmp_path):
    url, study, trial = _study(tmp_path)
    cb = OptunaPruning("val/acc", "s", trial.number, storage=url, report_step="step")
    _fit(tmp_path, cb, max_epochs=2)  # no pruner: reports only
    steps = sorted(study._storage.get_trial(trial._trial_id).intermediate_values)
    assert steps == [3, 6] and cb.stopped_epoch is None
    trial2 = study.ask()
    cb2 = OptunaPruning("val/acc", "s", trial2.number, storage=url, pruner=PRUNER)
    trainer = _fit(tmp_path, cb2, fast_dev_run=3)
    assert cb2.stopped_epoch is None and not cb2.decisions and trainer.current_epoch == 1


def test_the_job_config_builds_the_callback_with_the_storage_from_the_environment(
    tmp_path, monkeypatch
):
    url, _, trial = _study(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, url)
    cfg = {
        "optuna_trial": {
            "study": "s",
            "number": trial.number,
            "monitor": "val/acc",
            "pruner": PRUNER,
        }
    }
    [cb] = pruning_callbacks(cfg, [])
    assert pruning_callbacks(cfg, [cb]) == [] and pruning_callbacks({}, []) == []
    _fit(tmp_path, cb, max_epochs=2)
    assert cb.stopped_epoch == 1  # ThresholdPruner from the config: check 1 = epoch 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"monitor": ""}, "`monitor`"),
        ({"study": None}, "`study`"),
        ({"trial_number": -1}, "`trial_number`"),
        ({"report_step": "epoch"}, "`report_step`"),
        ({"pruner": {"_target_": "optuna.samplers.RandomSampler"}}, "`pruner`"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"monitor": "val/acc", "study": "s", "trial_number": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        OptunaPruning(**args)


def test_a_finished_trial_or_missing_monitor_is_an_error(tmp_path):
    url, study, trial = _study(tmp_path)
    study.tell(trial, 0.5)
    with pytest.raises(ValueError, match="is COMPLETE, not RUNNING"):
        _fit(tmp_path, OptunaPruning("val/acc", "s", trial.number, storage=url))
    trial2 = study.ask()
    with pytest.raises(KeyError, match="'val/nope' was not logged at validation 0"):
        _fit(tmp_path, OptunaPruning("val/nope", "s", trial2.number, storage=url))


def test_passes_the_conformance_kit(tmp_path):
    """State round trip, unique state keys, pickling, and named argument errors."""
    from eecontrol.testing import check_callback_conformance

    url, _, trial = _study(tmp_path)
    fitted = OptunaPruning("val/acc", "s", trial.number, storage=url, pruner=PRUNER)
    _fit(tmp_path, fitted)
    assert fitted.decisions, "the fitted callback made no decision: its state is trivial"
    check_callback_conformance(
        lambda **kw: OptunaPruning(storage=url, **kw),
        valid=[
            {"monitor": "val/acc", "study": "s", "trial_number": 0},
            {"monitor": "val/acc", "study": "s", "trial_number": 1},
            {"monitor": "val/loss", "study": "t", "trial_number": 0, "report_step": "step"},
        ],
        invalid=[
            ({"monitor": "val/acc", "study": "s", "trial_number": -1}, "trial_number", ">= 0"),
            ({"monitor": "", "study": "s", "trial_number": 0}, "monitor", "metric name"),
            ({"monitor": "val/acc", "study": "", "trial_number": 0}, "study", "study name"),
            (
                {"monitor": "val/acc", "study": "s", "trial_number": 0, "report_step": "epoch"},
                "report_step",
                "check",
            ),
        ],
        after_fit=(fitted, {"monitor": "val/acc", "study": "s", "trial_number": trial.number}),
    )
