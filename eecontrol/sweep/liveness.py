"""Which process owns a running trial, and failing the trials of processes that died.

A trial is marked with its owner (host, process id and the process's start time, so that
a reused process id is not mistaken for the owner). A process killed with SIGKILL cannot
finish its trial; any later process on the same host that opens the study finds the
owner gone and marks the trial ``FAIL``. Trials owned by another host are left alone
(their host cannot be asked); the sweeper fails those of its own jobs itself.
"""

from __future__ import annotations

import logging
import os
import socket

from optuna.storages import BaseStorage
from optuna.trial import TrialState

log = logging.getLogger(__name__)

OWNER_ATTR = "eecontrol:owner"
FAIL_REASON_ATTR = "eecontrol:fail_reason"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or '' where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_id(pid: int | None = None) -> str:
    """``host:pid:start`` of this process (or of ``pid`` on this host)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def owner_alive(owner: str) -> bool | None:
    """Whether the owner process still runs: None when it is on another host."""
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return not start or _start_time(pid) in ("", start)


def mark_owner(storage: BaseStorage, trial_id: int) -> None:
    """Records this process as the owner of a running trial."""
    storage.set_trial_system_attr(trial_id, OWNER_ATTR, owner_id())


def fail_dead_trials(storage: BaseStorage, study_id: int) -> list[int]:
    """Marks ``FAIL`` every running trial of the study whose owner process is gone.

    Args:
        storage: the study's storage.
        study_id: the study's id in it.

    Returns:
        The numbers of the trials marked ``FAIL``.
    """
    failed = []
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(OWNER_ATTR)
        if not owner or owner_alive(str(owner)) is not False:
            continue
        try:
            storage.set_trial_system_attr(
                t._trial_id, FAIL_REASON_ATTR, f"its process {owner} ended without finishing it"
            )
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except RuntimeError:  # finished meanwhile by someone else
            continue
        log.warning("eecontrol: trial %d was left running by a dead process; marked FAIL", t.number)
        failed.append(int(t.number))
    return failed
