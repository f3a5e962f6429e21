"""``SweeperCore``'s own logic on real Optuna storages: arguments, direction, recovery."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.trial import TrialState

from eecontrol.sweep.liveness import FAIL_REASON_ATTR, OWNER_ATTR, owner_id
from eecontrol.sweep.sweeper import SweeperCore, config_text
from eecontrol.sweep.trial import OBJECTIVE_ATTR, PRUNED_ATTR


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "up"}, "hydra.sweeper.direction"),
        ({"n_trials": 0}, "hydra.sweeper.n_trials"),
        ({"n_jobs": 1.5}, "hydra.sweeper.n_jobs"),
        ({"max_retries": -1}, "hydra.sweeper.max_retries"),
        ({"timeout": 0}, "hydra.sweeper.timeout"),
        ({"report_step": "epoch"}, "hydra.sweeper.report_step"),
    ],
)
def test_bad_options_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SweeperCore(**kwargs)


def _core(direction, optimized_mode) -> SweeperCore:
    core = SweeperCore(direction=direction)
    cfg = OmegaConf.create(
        {
            "optimized_metric": "val/acc",
            "optimized_mode": optimized_mode,
            "hydra": {"sweep": {"dir": "x"}},
        }
    )
    core.setup(cfg, launcher=None)
    return core


def test_the_direction_comes_from_optimized_mode_and_contradictions_are_errors():
    assert _core(None, "min")._direction() == "minimize"
    assert _core("max", None)._direction() == "maximize"
    assert _core("maximize", "max")._direction() == "maximize"
    with pytest.raises(ValueError, match="contradicts optimized_mode=min"):
        _core("maximize", "min")._direction()
    with pytest.raises(ValueError, match=r"hydra\.sweeper\.direction"):
        _core(None, None)._direction()


def test_the_trial_identity_round_trips_through_the_override_parser():
    ident = {
        "study": "my study",
        "number": 3,
        "monitor": "val/acc",
        "pruner": {"_target_": "eecontrol.sweep.pruner.LearningCurvePruner", "bounds": [0, 1]},
    }
    [parsed] = OverridesParser.create().parse_overrides([f"++optuna_trial={config_text(ident)}"])
    assert parsed.value() == ident


def test_a_rerun_settles_trials_its_dead_jobs_left_running(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_owner = owner_id(int(dead.stdout))  # that process has ended
    trials = [study.ask() for _ in range(4)]
    for t in trials:
        study._storage.set_trial_system_attr(t._trial_id, OWNER_ATTR, dead_owner)
    trials[0].report(0.5, 0)
    study._storage.set_trial_system_attr(trials[0]._trial_id, OBJECTIVE_ATTR, 0.5)
    trials[1].report(0.2, 0)
    study._storage.set_trial_system_attr(trials[1]._trial_id, PRUNED_ATTR, 0)
    study._storage.set_trial_system_attr(trials[3]._trial_id, OWNER_ATTR, owner_id())  # alive
    SweeperCore()._recover(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]
    assert study.trials[0].value == 0.5
    assert "ended without finishing it" in study.trials[2].system_attrs[FAIL_REASON_ATTR]


def test_the_storage_takes_a_url_or_a_sqlite_path_as_the_curve_store_does(tmp_path):
    """hparams_search=digits_curves_slurm gives both the same EECONTROL_CURVE_STORE."""
    url = "postgresql+psycopg://user:pw@host/db"
    for storage, expected in (
        (url, url),
        (str(tmp_path / "sub" / "curves.db"), f"sqlite:///{tmp_path / 'sub' / 'curves.db'}"),
    ):
        core = SweeperCore(storage=storage)
        core.setup(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}), launcher=None)
        assert core._storage_url() == expected
    assert (tmp_path / "sub").is_dir()  # the path's folder is made, as for the curve store
