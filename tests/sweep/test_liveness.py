"""A run left RUNNING by a process killed with SIGKILL becomes FAIL when the store is reopened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from eecontrol.sweep.liveness import OWNER_ATTR, owner_alive, owner_id
from eecontrol.sweep.store import CurveStore

CHILD = """
import sys, time
from eecontrol.sweep.store import CurveStore
store = CurveStore(sys.argv[1], "s", "max")
run = store.start_run({"lr": 0.1})
store.report(run, 0, 0.5)
print("started", flush=True)
time.sleep(120)
"""


def test_owner_ids_tell_live_from_dead_processes():
    assert owner_alive(owner_id()) is True
    assert owner_alive("another-host:1:1") is None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = owner_id(child.pid)
        assert owner_alive(owner) is True
    finally:
        child.kill()
        child.wait()
    assert owner_alive(owner) is False
    # the same process id with another start time is not the owner
    host, pid, _ = owner_id().rsplit(":", 2)
    assert owner_alive(f"{host}:{pid}:1") is False


def test_a_sigkilled_worker_run_becomes_failed(tmp_path):
    db = tmp_path / "curves.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        store = CurveStore(db, "s", "max")
        [run] = store.runs()
        assert run.state == "running"  # the owner is alive: left alone
        owner = store.storage.get_trial(run.run_id).system_attrs[OWNER_ATTR]
        assert owner.split(":")[1] == str(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    time.sleep(0.1)
    [run] = CurveStore(db, "s", "max").runs()
    assert run.state == "failed" and run.values == (0.5,)
