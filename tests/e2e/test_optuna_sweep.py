"""Real ``eecontrol_optuna`` sweeps of the digits CNN: pruning, a SIGKILLed job, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from eecontrol.cli import main as eecontrol_cli
from eecontrol.sweep.liveness import FAIL_REASON_ATTR, OWNER_ATTR
from eecontrol.sweep.store import CurveStore
from tests.e2e.test_train_cli import TRAIN, _run

pytestmark = pytest.mark.e2e

TINY = ["callbacks=none", "trainer.enable_model_summary=false", "logger=csv"]


def _study(sweep: Path, name: str) -> optuna.Study:
    db = sweep / "optuna.db"
    assert db.exists(), f"no study storage in {sweep}: {sorted(p.name for p in sweep.iterdir())}"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_digits_optuna_runs_ten_trials_and_prunes(tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    _run(
        [
            "-m",
            "hparams_search=digits_optuna",
            "hydra.sweeper.n_trials=10",
            "trainer.max_epochs=4",
            "+trainer.limit_train_batches=4",
            *TINY,
        ],
        tmp_path,
        timeout=900,
    )
    sweep = tmp_path / "logs" / "train" / "sweeps" / "digits_optuna"
    trials = _study(sweep, "digits_optuna").trials
    states = [t.state for t in trials]
    assert len(trials) == 10 and all(s.is_finished() for s in states), states
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 10
    # every validation was reported, by validation index; a pruned job stopped early
    assert all(sorted(t.intermediate_values) == [0, 1, 2, 3] for t in complete)
    assert all(len(t.intermediate_values) < 4 for t in pruned)
    for t in pruned:  # the prune is a decision of the job, with its reason
        decisions = [
            json.loads(x)
            for x in (sweep / str(t.number) / "decisions.jsonl").read_text().splitlines()
        ]
        [stop] = [d for d in decisions if d["action"] == "stop"]
        assert stop["callback"].startswith("OptunaPruning") and "MedianPruner" in stop["reason"]
    results = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    best = max(complete, key=lambda t: t.value)
    assert results["best_value"] == pytest.approx(best.value)
    assert results["best_params"] == best.params
    assert set(best.params) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.net.dropout",
        "model.net.hidden",
    }
    # the job's own config carries the trial's parameters and identity, no storage URL
    job_cfg = OmegaConf.load(sweep / str(best.number) / ".hydra" / "config.yaml")
    assert job_cfg.model.optimizer.lr == pytest.approx(best.params["model.optimizer.lr"])
    assert job_cfg.optuna_trial.number == best.number and "storage" not in job_cfg.optuna_trial
    capsys.readouterr()
    assert eecontrol_cli(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"{len(complete)} complete" in out and f"{len(pruned)} pruned" in out


def _curve_store_run_of(db: Path, lr: float) -> tuple[int, str] | None:
    """(pid, state) of the curve-store run with learning rate ``lr``, once it is stored."""
    if not db.exists():
        return None
    try:
        store = CurveStore(db, "eecontrol-curves", "max")
        for r in store.runs():
            if abs(r.hparams.get("lr", -1) - lr) < 1e-12:
                owner = store.storage.get_trial(r.run_id).system_attrs.get(OWNER_ATTR, "")
                return int(owner.split(":")[1]), r.state
    except Exception:  # the database is being created by the workers
        return None
    return None


@pytest.mark.timeout(900)
def test_a_sigkilled_job_fails_the_sweep_goes_on_and_a_rerun_completes_it(tmp_path):
    """Issue 13: a 6-job joblib sweep with one worker killed finishes the other jobs;
    rerunning the command completes the killed one; no curve-store run stays RUNNING."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    lrs = [0.004, 0.003, 0.002, 0.001, 0.0005, 0.0002]
    args = [
        "-m",
        "hparams_search=digits_curves",
        "model.optimizer.lr=" + ",".join(map(str, lrs)),
        # 24 short epochs: job 2 must still be training when the watcher's kill lands (with
        # 8 a fast machine finished it, store run complete, between the poll and the kill)
        "trainer.max_epochs=24",
        "+trainer.limit_train_batches=2",
        "callbacks=[curve_stopping]",
        "callbacks.curve_stopping.in_run=false",
        "callbacks.curve_stopping.log_prediction=false",
        "hydra.sweeper.max_retries=0",  # the killed job waits for the rerun
        "hydra.sweeper.mode=batch",  # a killed job breaks its batch (async: tests/e2e/test_optuna_async.py)
        "trainer.enable_model_summary=false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    sweep = tmp_path / "logs" / "train" / "multiruns" / "digits_curves"
    proc = subprocess.Popen(
        [TRAIN, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    victim = None
    try:
        deadline = time.monotonic() + 600
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            # job 2's directory appears when it starts; only then poll the store (cheaply)
            found = (
                _curve_store_run_of(sweep / "curves.db", lrs[2]) if (sweep / "2").exists() else None
            )
            if found and found[1] == "running":
                victim = found[0]
                os.kill(victim, signal.SIGKILL)  # the job's worker process (loky)
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    full = out.decode(errors="replace")
    log = full[-4000:]
    assert victim is not None, f"job 2 never ran while watched\n{log}"
    assert proc.returncode == 0, log
    assert "TerminatedWorkerError" in full  # the launcher failed for the batch...
    study = _study(sweep, "digits_curves")
    by_lr: dict[float, list] = {}
    for t in study.trials:
        by_lr.setdefault(t.params["model.optimizer.lr"], []).append(t)
    [killed] = by_lr[lrs[2]]
    assert killed.state == TrialState.FAIL and "lost" in killed.system_attrs[FAIL_REASON_ATTR]
    # ... and the sweep went on: the jobs after the broken batch ran and completed
    for lr in (lrs[0], lrs[1], lrs[4], lrs[5]):
        assert [t.state for t in by_lr[lr]] == [TrialState.COMPLETE], lr
    store = CurveStore(sweep / "curves.db", "eecontrol-curves", "max")
    assert not [r for r in store.runs() if r.state == "running"]
    assert "failed" in {r.state for r in store.runs() if abs(r.hparams["lr"] - lrs[2]) < 1e-12}
    before = {t.number for t in study.trials}

    _run(args, tmp_path, timeout=600)  # the same command again: resumes the study
    study = _study(sweep, "digits_curves")
    new = [t for t in study.trials if t.number not in before]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["model.optimizer.lr"] for t in complete) == sorted(lrs)
    # only the missing grid points ran again: the killed one (and its batch mate, if it died)
    assert {t.params["model.optimizer.lr"] for t in new} <= {lrs[2], lrs[3]}
    assert lrs[2] in {t.params["model.optimizer.lr"] for t in new}
    assert all(t.state == TrialState.COMPLETE for t in new)
    assert not [
        r
        for r in CurveStore(sweep / "curves.db", "eecontrol-curves", "max").runs()
        if r.state == "running"
    ]
