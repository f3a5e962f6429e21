"""``eecontrol_optuna`` sweeps on a real PostgreSQL server: 4 concurrent joblib jobs, the
submitit local executor, the curve store on the same server, and no password in any file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from eecontrol.sweep.liveness import OWNER_ATTR
from eecontrol.sweep.store import CurveStore
from tests.e2e.test_train_cli import TRAIN
from tests.sweep.postgres import postgres  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.e2e


def _sweep(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [TRAIN, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "WANDB_MODE": "offline", "COLUMNS": "200", **env},
    )
    assert out.returncode == 0, f"STDOUT\n{out.stdout[-3000:]}\nSTDERR\n{out.stderr[-5000:]}"
    return out.stdout + out.stderr


def _files_with(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``secret``."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes():
            hits.append(str(p.relative_to(root)))
    return hits


@pytest.mark.timeout(900)
def test_four_concurrent_jobs_share_a_postgres_study_and_curve_store(tmp_path, postgres):  # noqa: F811
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    output = _sweep(
        [
            "hparams_search=digits_optuna",
            "hydra.sweeper.study_name=pg-joblib",
            "hydra.sweeper.storage='${oc.env:SWEEP_DB}'",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=4",
            "hydra.launcher.n_jobs=4",
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=2",
            "trainer.enable_model_summary=false",
            "callbacks=[model_checkpoint,curve_stopping]",
            "callbacks.curve_stopping.store='${oc.env:CURVE_DB}'",
            "callbacks.curve_stopping.study_name=pg-curves",
            "callbacks.curve_stopping.monitor=val/acc",
            "callbacks.curve_stopping.mode=max",
            "callbacks.curve_stopping.log_prediction=false",
        ],
        tmp_path,
        {"SWEEP_DB": postgres.url, "CURVE_DB": postgres.url_no_password},
    )
    study = optuna.load_study(study_name="pg-joblib", storage=postgres.url)
    assert len(study.trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)
    # four jobs ran at once: one batch of 4 trials in 4 worker processes
    owners = {t.system_attrs[OWNER_ATTR].split(":")[1] for t in study.trials}
    assert len(owners) == 4
    # the curve store's PostgreSQL path: every job's curve, none left running
    runs = CurveStore(postgres.url_no_password, "pg-curves", "max").runs()
    assert len(runs) == 4 and all(r.state in ("complete", "stopped") for r in runs)
    assert all(len(r.values) >= 1 for r in runs)
    sweep = tmp_path / "logs" / "train" / "sweeps" / "pg-joblib"
    assert (sweep / "optimization_results.yaml").exists()
    assert list(sweep.glob("*/checkpoints/*.ckpt")), "the check below must see checkpoints"
    # the password is in no file of the sweep (configs, CSV, checkpoints) and not in the log
    assert _files_with(tmp_path, postgres.secret) == []
    assert postgres.secret not in output
    assert "sweeper:***@" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.timeout(900)
def test_submitit_local_jobs_against_postgres(tmp_path, postgres):  # noqa: F811
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    output = _sweep(
        [
            "hparams_search=digits_optuna",
            "hydra/launcher=submitit_local",
            "hydra.sweeper.study_name=pg-submitit",
            "hydra.sweeper.storage='${oc.env:SWEEP_DB}'",
            "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=2",
            "trainer.enable_model_summary=false",
            "callbacks=none",
        ],
        tmp_path,
        {"SWEEP_DB": postgres.url},
    )
    study = optuna.load_study(study_name="pg-submitit", storage=postgres.url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(sorted(t.intermediate_values) == [0, 1] for t in study.trials)
    sweep = tmp_path / "logs" / "train" / "sweeps" / "pg-submitit"
    assert list((sweep / ".submitit").rglob("*_result.pkl")), "the jobs did not run in submitit"
    assert _files_with(tmp_path, postgres.secret) == []
    assert postgres.secret not in output
