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


def _submitit_sweep(study: str, n_trials: int, *extra: str) -> list[str]:
    """The overrides of a digits_optuna sweep on submitit's local executor into the server's
    study ``study``: ``n_trials`` trials of 2 epochs of 2 batches, no callbacks."""
    return [
        "hparams_search=digits_optuna",
        "hydra/launcher=submitit_local",
        f"hydra.sweeper.study_name={study}",
        "hydra.sweeper.storage='${oc.env:SWEEP_DB}'",
        f"hydra.sweeper.n_trials={n_trials}",
        *extra,
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=2",
        "trainer.enable_model_summary=false",
        "callbacks=none",
    ]


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
            "hydra.sweeper.mode=batch",  # one batch of 4 trials in 4 processes
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
        _submitit_sweep("pg-submitit", 2),
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


@pytest.mark.timeout(900)
def test_async_submitit_local_workers_share_a_postgres_study(tmp_path, postgres):  # noqa: F811
    """Issue 26: two asynchronous workers (submitit's local executor) fill one study on a
    real PostgreSQL server, each asking for trials until it holds n_trials."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from eecontrol.sweep.worker import WORKER_ATTR

    output = _sweep(
        _submitit_sweep(
            "pg-async",
            4,
            "hydra.sweeper.mode=async",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.heartbeat_interval=1",
        ),
        tmp_path,
        {"SWEEP_DB": postgres.url},
    )
    study = optuna.load_study(study_name="pg-async", storage=postgres.url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4, output[-4000:]
    assert all(t.state.is_finished() for t in study.trials)
    rows = {k: v for k, v in study.user_attrs.items() if k.startswith(f"{WORKER_ATTR}:")}
    assert len(rows) == 2 and all(rows.values()), rows  # both workers ran trials
    assert {t.number for t in finished} <= {n for r in rows.values() for n, *_ in r}
    sweep = tmp_path / "logs" / "train" / "sweeps" / "pg-async"
    assert len(list((sweep / ".submitit").rglob("*_result.pkl"))) == 2  # two worker jobs
    assert all((sweep / str(t.number) / ".hydra" / "config.yaml").exists() for t in finished)
    assert _files_with(tmp_path, postgres.secret) == []
    assert postgres.secret not in output


def test_a_plain_postgresql_url_connects_with_the_installed_psycopg3(postgres):  # noqa: F811
    """Defect (5): `postgresql://` (SQLAlchemy: psycopg2) with only psycopg 3 installed."""
    import importlib.util

    assert importlib.util.find_spec("psycopg2") is None  # the slurm/dev extras: psycopg 3 only
    url = postgres.url.replace("postgresql+psycopg://", "postgresql://")
    assert url.startswith("postgresql://sweeper:")
    store = CurveStore(url, "plain-url", "max")
    run = store.start_run({"lr": 0.1})
    store.report(run, 0, 0.4)
    store.finish(run, 0.5)
    [stored] = CurveStore(url, "plain-url", "max").runs()
    assert stored.result == 0.5 and stored.values == (0.4,)
