"""Which process owns a running trial, and failing the trials of processes that died.

A trial is marked with its owner (host, process id and the process's start time, so that
a reused process id is not mistaken for the owner). A process killed with SIGKILL cannot
finish its trial; any later process on the same host that opens the study finds the
owner gone and marks the trial ``FAIL``. Trials owned by another host are left alone
(their host cannot be asked); the sweeper fails those of its own jobs itself, and
asynchronous workers use Optuna's heartbeats. The other way round, a job whose sweep's
main process was killed ends itself (:func:`watch_parent`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

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


class ParentWatch:
    """Ends this process when the sweep's main process (its "parent") is gone.

    A job of a sweep (a joblib/loky worker, a submitit job) outlives a main process killed
    with SIGKILL and would go on training and writing trials nobody counts. One daemon
    thread per process polls the main process (:func:`owner_alive`, so a reused pid is no
    parent) every ``interval`` seconds; when it is gone, it fails the trial this process is
    running (reason in ``eecontrol:fail_reason``; the rerun asks its parameters again) and
    ends the process with exit code 75. A parent on another host (SLURM) cannot be asked:
    no watch is started; heartbeats fail those trials instead.

    Use :func:`watch_parent` (one watch per process and parent).
    """

    EXIT_CODE = 75

    def __init__(self, parent: str, interval: float = 1.0) -> None:
        self.parent, self.interval = parent, float(interval)
        self._lock = threading.Lock()
        self._trial: tuple[BaseStorage, int] | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="eecontrol-parent-watch", daemon=True)

    def set_trial(self, storage: BaseStorage | None, trial_id: int | None) -> None:
        """The trial this process runs now (None: none)."""
        with self._lock:
            self._trial = None if storage is None or trial_id is None else (storage, trial_id)

    def ask(self, storage: BaseStorage, ask: Any) -> Any:
        """Runs ``ask()`` (which creates a RUNNING trial) and registers that trial atomically.

        The watch cannot end the process between the trial's creation and its
        registration, so a trial asked at the moment the main process dies is failed, not
        left RUNNING.
        """
        with self._lock:
            trial = ask()
            self._trial = (storage, trial._trial_id)
            return trial

    def stop(self) -> None:
        """Stops watching (the process ends normally)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if owner_alive(self.parent) is False:
                self._parent_gone()
                return

    def _parent_gone(self) -> None:
        with self._lock:
            trial = self._trial
        if trial is not None:
            storage, trial_id = trial
            try:
                if storage.get_trial(trial_id).state == TrialState.RUNNING:
                    storage.set_trial_system_attr(
                        trial_id,
                        FAIL_REASON_ATTR,
                        f"the sweep's main process {self.parent} ended; its job stopped",
                    )
                    storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except Exception as err:  # the database may be gone too: exit anyway
                log.warning("eecontrol: could not fail trial %s: %s", trial_id, err)
        log.warning(
            "eecontrol: the sweep's main process %s is gone; this job (pid %d) ends",
            self.parent,
            os.getpid(),
        )
        logging.shutdown()
        os._exit(self.EXIT_CODE)


_WATCHES: dict[str, ParentWatch] = {}


def watch_parent(parent: str | None, interval: float = 1.0) -> ParentWatch | None:
    """The running :class:`ParentWatch` of ``parent`` in this process (started on first use).

    Returns None when there is nothing to watch: no parent given, the parent is this very
    process (the basic launcher runs jobs in the main process), or it is on another host.
    """
    if not parent or owner_alive(parent) is None or parent == owner_id():
        return None
    watch = _WATCHES.get(parent)
    if watch is None:
        watch = _WATCHES[parent] = ParentWatch(parent, interval)
        watch.thread.start()
    return watch
