"""Asynchronous workers' fault handling on real Optuna storages: heartbeats, dead owners,
the parent watch (issue 26)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import optuna
from optuna.trial import TrialState

from eecontrol.sweep.liveness import FAIL_REASON_ATTR, OWNER_ATTR, owner_id
from eecontrol.sweep.worker import LOST_RETRY_ATTR, WorkerSpec, heartbeat_storage, settle


def _spec(**kw) -> WorkerSpec:
    return WorkerSpec(study_name="s", arguments=[], sampler=None, pruner=None, n_trials=4, **kw)


def test_a_trial_without_heartbeats_fails_and_is_asked_again(tmp_path):
    """A worker on another host died: its trial's heartbeat stops; the next worker fails
    the trial and enqueues its parameters (Optuna's heartbeat + retry callback)."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = heartbeat_storage(url, _spec(heartbeat_interval=1, grace_period=1, max_retries=1))
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, "otherhost:1:1")  # not ours
    storage.record_heartbeat(trial._trial_id)
    assert settle(study, max_retries=1) == []
    assert study.trials[0].state == TrialState.RUNNING  # fresh heartbeat: alive
    time.sleep(2.5)
    settle(study, max_retries=1)
    trials = study.trials
    assert trials[0].state == TrialState.FAIL
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1
    retry = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert retry.params["x"] == trial.params["x"]  # the same parameters, asked again


def test_a_trial_of_a_dead_local_worker_fails_and_is_retried_up_to_max_retries(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = heartbeat_storage(url, _spec(heartbeat_interval=None))
    study = optuna.create_study(storage=storage, study_name="s")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    t0 = study.ask(dist)
    storage.set_trial_system_attr(t0._trial_id, OWNER_ATTR, owner_id(int(dead.stdout)))
    assert settle(study, max_retries=1) == [0]
    assert study.trials[0].state == TrialState.FAIL
    assert "ended without finishing it" in study.trials[0].system_attrs[FAIL_REASON_ATTR]
    t1 = study.ask(dist)  # the retry
    assert t1.params == t0.params and t1.user_attrs[LOST_RETRY_ATTR] == 0
    storage.set_trial_system_attr(t1._trial_id, OWNER_ATTR, owner_id(int(dead.stdout)))
    assert settle(study, max_retries=1) == [1]
    assert not [t for t in study.trials if t.state == TrialState.WAITING]  # retries used up


def test_a_job_ends_itself_and_fails_its_trial_when_the_main_process_is_gone(tmp_path):
    """Defect (2): the parent watch of a job whose sweep's main process was SIGKILLed."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    trial = study.ask()
    # a "main process" that starts a "job", then is killed; the job must end by itself
    job = textwrap.dedent(
        f"""
        import sys, time
        from eecontrol.sweep.liveness import watch_parent
        from eecontrol.sweep.trial import open_storage
        parent = sys.argv[1]
        storage = open_storage({url!r})
        watch = watch_parent(parent, interval=0.2)
        assert watch is not None
        watch.set_trial(storage, {trial._trial_id})
        print("watching", flush=True)
        time.sleep(60)  # training...
        print("not ended", flush=True)
        """
    )
    main = textwrap.dedent(
        f"""
        import subprocess, sys, time
        from eecontrol.sweep.liveness import owner_id
        job = subprocess.Popen([sys.executable, "-c", {job!r}, owner_id()], stdout=subprocess.PIPE, text=True)
        assert job.stdout.readline().strip() == "watching"
        print(job.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", main], stdout=subprocess.PIPE, text=True)
    job_pid = int(parent.stdout.readline())
    parent.kill()  # SIGKILL
    parent.wait()
    deadline = time.monotonic() + 20
    alive = True
    while alive and time.monotonic() < deadline:
        try:
            with open(f"/proc/{job_pid}/stat") as f:
                alive = f.read().rsplit(")", 1)[-1].split()[0] != "Z"
        except OSError:
            alive = False
        time.sleep(0.2)
    if alive:
        subprocess.run(["kill", "-9", str(job_pid)])
    assert not alive, "the job outlived its sweep's main process"
    t = study.trials[0]
    assert t.state == TrialState.FAIL
    assert "main process" in t.system_attrs[FAIL_REASON_ATTR]
