"""Asynchronous ``eecontrol_optuna`` sweeps of the digits CNN (issue 26): workers that ask
the study for trials, pruning that frees a worker at once, a SIGKILLed main process."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from eecontrol.sweep.liveness import FAIL_REASON_ATTR, owner_alive, owner_id
from eecontrol.sweep.worker import WORKER_ATTR
from tests.e2e.test_train_cli import TRAIN, _run

pytestmark = pytest.mark.e2e

TINY = ["callbacks=none", "trainer.enable_model_summary=false", "logger=csv"]
# the slack a loaded 2-core machine needs between one trial's end and the next one's start
# (tell, ask, compose the config, build the Trainer); a batch's idle slot waits a whole trial
GAP_S = 6.0


def _study(sweep: Path, name: str) -> optuna.Study:
    db = sweep / "optuna.db"
    assert db.exists(), f"no study storage in {sweep}"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def _sweep(
    tmp_path: Path, name: str, overrides: list[str], timeout: int
) -> tuple[Path, optuna.Study]:
    """``eecontrol-train -m hparams_search=digits_optuna`` as study ``name``: its folder and study."""
    run_args = ["-m", "hparams_search=digits_optuna", f"hydra.sweeper.study_name={name}"]
    _run([*run_args, *overrides], tmp_path, timeout=timeout)
    sweep = tmp_path / "logs" / "train" / "sweeps" / name
    return sweep, _study(sweep, name)


def _worker_rows(study: optuna.Study) -> dict[str, list[list]]:
    return {k: v for k, v in study.user_attrs.items() if k.startswith(f"{WORKER_ATTR}:")}


def _param_sets(trials: list) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


@pytest.mark.timeout(900)
def test_async_workers_with_pruning_never_sit_idle(tmp_path):
    """Acceptance: 2 joblib workers, successive halving; no worker idle while trials remained."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep, study = _sweep(
        tmp_path,
        "async",
        [
            "hydra.sweeper.n_trials=8",
            "hydra/sweeper/eecontrol_pruner=successive_halving",
            "hydra.sweeper.pruner.min_resource=1",
            "hydra.sweeper.pruner.reduction_factor=2",
            "hydra.launcher.n_jobs=2",
            "trainer.max_epochs=4",
            "+trainer.limit_train_batches=2",
            *TINY,
        ],
        timeout=900,
    )
    trials = study.trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8
    assert any(t.state == TrialState.PRUNED for t in trials), "nothing was pruned"
    rows = _worker_rows(study)
    assert len(rows) == 2, f"expected 2 workers, got {sorted(rows)}"
    assert all(len(r) >= 2 for r in rows.values()), rows
    assert {t.number for t in finished} <= {n for r in rows.values() for n, *_ in r}
    starts = sorted(start for r in rows.values() for _, start, _, _ in r)
    for name, r in rows.items():
        for (n0, _, end0, state0), (_, start1, _, _) in itertools.pairwise(r):
            # the next trial started right after this one ended, pruned or not
            assert start1 - end0 < GAP_S, (
                f"{name} idle {start1 - end0:.1f} s after trial {n0} ({state0})"
            )
        last_end = r[-1][2]
        # and the worker did not leave while trials remained to be started
        assert not [s for s in starts if s > last_end + GAP_S], f"{name} ended early"
    # each trial ran in its own job directory, with its parameters and its trial's identity
    from omegaconf import OmegaConf

    best = study.best_trial
    cfg = OmegaConf.load(sweep / str(best.number) / ".hydra" / "config.yaml")
    assert cfg.optuna_trial.number == best.number
    assert cfg.model.optimizer.lr == pytest.approx(best.params["model.optimizer.lr"])
    assert (sweep / "optimization_results.yaml").exists()


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[-1].split()[1])
        parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.mark.timeout(900)
def test_sigkill_of_the_main_process_ends_its_workers_and_the_rerun_finishes(tmp_path):
    """Acceptance: kill -9 of the sweep's main process leaves no worker; the rerun completes
    the study to n_trials finished trials with no repeated parameter set (seeded TPE)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    n_trials = 6
    args = [
        "-m",
        "hparams_search=digits_optuna",
        "hydra.sweeper.study_name=killed",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.launcher.n_jobs=2",
        "trainer.max_epochs=6",
        "+trainer.limit_train_batches=3",
        *TINY,
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    sweep = tmp_path / "logs" / "train" / "sweeps" / "killed"
    proc = subprocess.Popen(
        [TRAIN, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    workers: list[str] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if (sweep / "optuna.db").exists():
                try:
                    trials = _study(sweep, "killed").trials
                except Exception:  # being created
                    trials = []
                done = [t for t in trials if t.state.is_finished()]
                running = [t for t in trials if t.state == TrialState.RUNNING]
                if len(done) >= 2 and running:
                    workers = [owner_id(p) for p in _children(proc.pid)]
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.5)
        proc.wait(timeout=60)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert workers, f"the sweep never had 2 finished and 1 running trial\n{out[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30  # the workers' watch polls every second
    while time.monotonic() < deadline and any(owner_alive(w) for w in workers):
        time.sleep(0.5)
    left = [w for w in workers if owner_alive(w)]
    for w in left:  # never leave them behind, even when the test fails
        os.kill(int(w.split(":")[1]), signal.SIGKILL)
    assert not left, f"worker processes left running after the main process was killed: {left}"
    study = _study(sweep, "killed")
    before = study.trials
    # A worker whose watch saw the main process go fails its trial with the reason; a worker
    # that loky ended first leaves its trial RUNNING (its heartbeat stops, so the rerun's
    # heartbeat check fails it). Seen in about 1 of 3 runs on a loaded machine.
    running = [t for t in before if t.state == TrialState.RUNNING]
    cut = [t for t in before if t.state == TrialState.FAIL]
    assert cut or running, "the kill interrupted no trial"
    assert all("main process" in t.system_attrs[FAIL_REASON_ATTR] for t in cut)
    assert sum(t.state.is_finished() and t.state != TrialState.FAIL for t in before) < n_trials

    _run(args, tmp_path, timeout=600)  # the same command again: resumes the study
    study = _study(sweep, "killed")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert len(study.trials) > len(before), "the rerun ran nothing"
    # every trial the kill left RUNNING (a worker loky ended before its watch) is failed
    # by the rerun, with the reason, and nothing is left RUNNING
    after = {t.number: t for t in study.trials}
    assert not [t.number for t in study.trials if t.state == TrialState.RUNNING]
    for t in running:
        assert after[t.number].state == TrialState.FAIL, f"trial {t.number} was not failed"
        assert after[t.number].system_attrs.get(FAIL_REASON_ATTR), f"trial {t.number}: no reason"
    sets = _param_sets(finished)
    assert len(set(sets)) == len(sets), "the seeded rerun repeated a parameter set"


@pytest.mark.timeout(600)
def test_the_sweep_is_a_wandb_group_and_each_trial_a_named_run(tmp_path):
    """W&B grouping: group = the study, run name = its trial, parameters in the run config."""
    sweep, study = _sweep(
        tmp_path,
        "wb",
        [
            "hydra/launcher=basic",  # one worker in the main process
            "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "callbacks=none",
            "trainer.enable_model_summary=false",
            "logger=wandb",
        ],
        timeout=600,
    )
    from omegaconf import OmegaConf

    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        cfg = OmegaConf.load(sweep / str(t.number) / ".hydra" / "config.yaml")
        assert cfg.logger.wandb.group == "wb" and cfg.logger.wandb.name == f"wb-trial-{t.number}"
        assert cfg.model.optimizer.lr == pytest.approx(t.params["model.optimizer.lr"])
        [run] = list((sweep / str(t.number) / "wandb").glob("offline-run-*/run-*.wandb"))
        data = run.read_bytes()  # the offline run's records hold its name, group and config
        assert f"wb-trial-{t.number}".encode() in data and b"wb" in data
        assert repr(t.params["model.optimizer.lr"]).encode()[:8] in data


@pytest.mark.timeout(600)
def test_a_multi_objective_sweep_of_accuracy_and_epochs_writes_its_pareto_front(tmp_path):
    """Multi-objective: maximise val/acc, minimise epochs trained (the jobs store both)."""
    from omegaconf import OmegaConf

    sweep, study = _sweep(
        tmp_path,
        "mo",
        [
            "hydra/launcher=basic",
            "hydra/sweeper/eecontrol_pruner=none",
            "hydra.sweeper.direction=[maximize,minimize]",
            "hydra.sweeper.objectives=[val/acc,epochs]",
            "hydra.sweeper.n_trials=4",
            "trainer.max_epochs=choice(1,2,3)",
            "+trainer.limit_train_batches=2",
            *TINY,
        ],
        timeout=600,
    )
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # the second objective is the epochs the job trained
        assert t.values[1] == t.params["trainer.max_epochs"]
        assert 0.0 <= t.values[0] <= 1.0
    results = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    assert results["directions"] == ["maximize", "minimize"]
    assert results["objectives"] == ["val/acc", "epochs"]
    front = {f["number"] for f in results["best_trials"]}
    assert front and front == {t.number for t in study.best_trials}
