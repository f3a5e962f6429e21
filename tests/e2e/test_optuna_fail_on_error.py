"""``hydra.sweeper.fail_on_error``: a real sweep with one job that raises inside its run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from eecontrol.sweep.liveness import FAIL_REASON_ATTR
from tests.e2e.test_train_cli import TRAIN, _run

pytestmark = pytest.mark.e2e

BAD = "`batch_size` must be an integer in [1, inf), got 0."  # the data module's own check


def _args(sweep_dir: str, *extra: str) -> list[str]:
    """A 2-point grid (basic launcher, 1 short epoch): batch size 64 trains, 0 is rejected by
    the job's data module when the job builds it (the config composes fine)."""
    return [
        "-m",
        "hydra/sweeper=eecontrol_optuna",
        "hydra/sweeper/eecontrol_sampler=grid",
        "hydra.sweeper.n_trials=null",
        "hydra.sweeper.study_name=failing",
        f"hydra.sweep.dir={sweep_dir}",
        "data.batch_size=64,0",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "test=false",
        "callbacks=none",
        "logger=csv",
        "trainer.enable_model_summary=false",
        *extra,
    ]


def _trials(sweep: Path) -> dict[int, optuna.trial.FrozenTrial]:
    """The study's trials by batch size (exactly one trial per grid point)."""
    db = sweep / "optuna.db"
    assert db.exists(), f"no study storage in {sweep}"
    trials = optuna.load_study(study_name="failing", storage=f"sqlite:///{db}").trials
    by_size = {t.params["data.batch_size"]: t for t in trials}
    assert len(trials) == 2 and sorted(by_size) == [0, 64], [t.params for t in trials]
    return by_size


def test_fail_on_error_exits_non_zero_naming_the_failed_trial_and_default_exits_zero(tmp_path):
    # default (fail_on_error=false): the failed trial is recorded, the sweep exits 0
    _run(_args("lenient"), tmp_path)
    trials = _trials(tmp_path / "lenient")
    assert trials[0].state == TrialState.FAIL and BAD in trials[0].system_attrs[FAIL_REASON_ATTR]
    assert trials[64].state == TrialState.COMPLETE and trials[64].value is not None

    # fail_on_error=true: the same sweep runs every trial, writes its results, then exits 1
    env = {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "200"}
    out = subprocess.run(
        [TRAIN, *_args("strict", "hydra.sweeper.fail_on_error=true")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    trials = _trials(tmp_path / "strict")  # preconditions: both jobs ran, batch size 0 failed
    assert trials[0].state == TrialState.FAIL and BAD in trials[0].system_attrs[FAIL_REASON_ATTR]
    assert trials[64].state == TrialState.COMPLETE
    results = OmegaConf.load(tmp_path / "strict" / "optimization_results.yaml")
    assert results.trials.fail == 1 and results.trials.complete == 1
    log = out.stdout[-3000:] + out.stderr[-5000:]
    assert out.returncode != 0, log
    failed = trials[0].number
    assert f"1 trial(s) failed (fail_on_error=true): trial {failed}: " in out.stderr, log
    assert BAD in out.stderr.split("fail_on_error=true")[-1], log
