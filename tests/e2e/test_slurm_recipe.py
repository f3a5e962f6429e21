"""``hparams_search=digits_curves_slurm`` run for real, with submitit's local executor in
place of SLURM: the eecontrol_optuna grid sweeper, its study and the curve store on the
database of ``EECONTROL_CURVE_STORE``, and a rerun of the same command that resumes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from eecontrol.sweep.store import CurveStore
from tests.e2e.test_train_cli import TRAIN

pytestmark = pytest.mark.e2e

LRS = [0.003, 0.001]


def _sweep(cwd: Path, db: Path) -> str:
    out = subprocess.run(
        [
            TRAIN,
            "-m",
            "hparams_search=digits_curves_slurm",
            "hydra/launcher=submitit_local",  # the recipe's jobs, on this machine
            "model.optimizer.lr=" + ",".join(map(str, LRS)),
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "trainer.enable_model_summary=false",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "WANDB_MODE": "offline",
            "COLUMNS": "200",
            "EECONTROL_CURVE_STORE": f"sqlite:///{db}",
        },
    )
    assert out.returncode == 0, f"STDOUT\n{out.stdout[-3000:]}\nSTDERR\n{out.stderr[-5000:]}"
    return out.stdout + out.stderr


@pytest.mark.timeout(900)
def test_slurm_recipe_runs_its_grid_on_the_env_database_and_a_rerun_resumes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    db = tmp_path / "curves.db"
    _sweep(tmp_path, db)
    sweep = tmp_path / "logs" / "train" / "multiruns" / "digits-lr-sweep"  # named by the study
    assert db.is_file(), f"no database at EECONTROL_CURVE_STORE; tmp: {os.listdir(tmp_path)}"
    assert sweep.is_dir(), f"no sweep directory named after the study: {os.listdir(tmp_path)}"
    assert list((sweep / ".submitit").rglob("*_result.pkl")), "the jobs did not run in submitit"
    assert not (sweep / "optuna.db").exists()  # the study is on the env's database, not here
    storage = f"sqlite:///{db}"
    study = optuna.load_study(study_name="digits-lr-sweep", storage=storage)
    trials = study.trials
    assert len(trials) == 2, [t.state for t in trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert [t.params["model.optimizer.lr"] for t in trials] == LRS  # the grid, in order
    assert all(sorted(t.intermediate_values) == [0, 1] for t in trials)  # every validation
    # the jobs' curves: the same database, the recipe's own study
    runs = CurveStore(db, "digits-lr-sweep-curves", "max").runs()
    assert sorted(r.hparams["lr"] for r in runs) == sorted(LRS)
    assert all(r.state in ("complete", "stopped") and len(r.values) == 2 for r in runs)
    results = (sweep / "optimization_results.yaml").read_text()
    assert "study_name: digits-lr-sweep" in results and "complete: 2" in results

    output = _sweep(tmp_path, db)  # the same command again: the study resumes, nothing runs
    again = optuna.load_study(study_name="digits-lr-sweep", storage=storage).trials
    assert [(t.number, t.state) for t in again] == [(t.number, t.state) for t in trials]
    assert "0 trial(s) to run" in output
    assert len(CurveStore(db, "digits-lr-sweep-curves", "max").runs()) == 2
