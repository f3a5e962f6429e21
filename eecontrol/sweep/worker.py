"""Asynchronous sweep workers: each launched job asks the shared study for trials until it is full.

In ``hydra.sweeper.mode=async`` the sweeper launches ``n_jobs`` worker jobs through the
configured launcher (joblib, submitit local or SLURM, or the basic launcher: one worker in
the main process). Each worker loops (Optuna's distributed pattern, on the study's RDB
storage): settle trials of dead workers, ask a trial, compose the trial's config with
Hydra (the same composition the launcher does for a batch job: its own job directory
``<sweep dir>/<trial number>``, ``.hydra/*.yaml``, logs), run the app in-process, tell
the result, and ask again until the study holds ``n_trials`` finished trials. A pruned
trial frees its worker at once, so the epochs pruning saves become wall-clock saved.

Faults: while a trial runs its worker records Optuna heartbeats; a trial whose worker
died (no heartbeat for ``grace_period`` s, or, on this host, an owner process that is
gone) becomes ``FAIL`` and its parameters are asked again up to ``max_retries`` times.
A worker ends itself when the sweep's main process is gone (:func:`watch_parent`).
Each worker keeps its trials' start and end times in the study's user attribute
``eecontrol:worker:<index>`` (``[number, start, end, state]`` rows, Unix seconds).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, run_job
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from eecontrol.sweep.options import config_text
from eecontrol.sweep.outcome import tell_job
from eecontrol.sweep.sampling import build_sampler
from eecontrol.sweep.space import format_value, parse_search_space, trial_overrides
from eecontrol.util.liveness import (
    FAIL_REASON_ATTR,
    fail_dead_trials,
    mark_owner,
    watch_parent,
)
from eecontrol.util.optuna_study import (
    STORAGE_ENV,
    build_pruner,
    driver_url,
    rdb_storage,
    storage_from_env,
)

log = logging.getLogger(__name__)

WORKER_KEY = "optuna_worker"
WORKER_ATTR = "eecontrol:worker"
RETRY_ATTR = "eecontrol:retry_of"
LOST_RETRY_ATTR = "eecontrol:lost_retry_of"  # asked again within the sweep: on top of its budget
SURPLUS = "surplus:"
ENQUEUED_ATTR = "eecontrol:enqueued"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class WorkerSpec:
    """What every worker of one asynchronous sweep needs (pickled with the task).

    Args:
        study_name: the study.
        arguments: the search space as overrides (``hydra.sweeper.params`` + command line).
        sampler: the sampler config (``_target_``), or None (TPE).
        pruner: the pruner config, or None.
        n_trials: the trials this sweep runs (its budget, as in batch mode): finished ones and
            failed ones count (a job that raised is not retried: it would fail again);
            trials lost with their worker are asked again on top (``max_retries``).
        first_number: the first trial number of this sweep (earlier ones are a resumed past).
        max_failures: a worker stops asking when this sweep has this many ``FAIL`` trials.
        max_retries: times the parameters of a trial lost with its worker are asked again.
        heartbeat_interval: seconds between heartbeats of a running trial, or None (off).
        grace_period: seconds without a heartbeat after which a trial is stale (``FAIL``).
        parent: the owner id of the sweep's main process (workers end when it is gone).
        deadline: Unix time after which no worker starts a trial, or None.
        ident: the ``optuna_trial`` config of the jobs, less ``number``.
        max_failure_rate: workers stop asking once more than this fraction of the sweep's
            trials failed (None: no limit).
        custom_search_space: ``module.function(cfg, trial)`` run after each ask, or None.
    """

    study_name: str
    arguments: list[str]
    sampler: dict[str, Any] | None
    pruner: dict[str, Any] | None
    n_trials: int
    first_number: int = 0
    max_failures: int = 1
    max_retries: int = 1
    heartbeat_interval: int | None = 10
    grace_period: int | None = None
    parent: str | None = None
    deadline: float | None = None
    ident: dict[str, Any] = field(default_factory=dict)
    max_failure_rate: float | None = None
    custom_search_space: str | None = None
    objectives: list[str] | None = None


Extender = Callable[[DictConfig, optuna.Trial], None]


def load_extender(path: str | None) -> Extender | None:
    """The ``custom_search_space`` function ``module.function`` (or None).

    Raises:
        ValueError: naming ``hydra.sweeper.custom_search_space`` when it cannot be imported.
    """
    if not path:
        return None
    from hydra.utils import get_method

    try:
        return get_method(str(path))
    except Exception as err:
        raise ValueError(
            f"hydra.sweeper.custom_search_space={path!r} is not an importable function "
            f"`module.function(cfg, trial)`: {err}"
        ) from err


def ask_trial(
    study: optuna.Study, space: Any, extender: Extender | None, cfg: DictConfig | None
) -> optuna.Trial:
    """Asks a trial over the search space, then lets ``custom_search_space`` add parameters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats "supposed to be used with optimize"
        trial = study.ask(space.distributions)
    if extender is not None:
        extender(cfg, trial)
    return trial


def wandb_overrides(cfg: DictConfig | None, study: str, number: int) -> list[str]:
    """W&B grouping: the sweep is a W&B group (its study name), each trial a named run.

    Only for an app whose config has ``logger.wandb`` (eecontrol's ``logger=wandb``); the
    run's config (everything the app logs as hyperparameters) holds the trial's parameters.
    """
    from omegaconf import OmegaConf

    if cfg is None or OmegaConf.select(cfg, "logger.wandb", default=None) is None:
        return []
    return [
        f"logger.wandb.group={format_value(study)}",
        f"logger.wandb.name={format_value(f'{study}-trial-{number}')}",
    ]


def failure_counts(study: optuna.Study, first: int) -> tuple[int, int]:
    """(failed, finished incl. failed) trials numbered ``first`` or later (this sweep's)."""
    states = (*FINISHED, TrialState.FAIL)
    trials = [t for t in study.get_trials(deepcopy=False, states=states) if t.number >= first]
    return sum(t.state == TrialState.FAIL for t in trials), len(trials)


def heartbeat_storage(url: str, spec: WorkerSpec) -> RDBStorage:
    """The study's storage with Optuna's heartbeats on (stale trials fail, then retry)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60.0}
    url = driver_url(url)
    if not spec.heartbeat_interval:
        return rdb_storage(url, engine_kwargs=kwargs)
    grace = spec.grace_period or 2 * int(spec.heartbeat_interval) + 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return rdb_storage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=int(spec.heartbeat_interval),
            grace_period=int(grace),
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry=spec.max_retries
            )
            if spec.max_retries > 0
            else None,
        )


class _Heartbeat:
    """Records a heartbeat of one trial every ``interval`` s in a daemon thread."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int | None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(float(self.interval or 1)):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # a database hiccup must not kill the trial
                log.warning(
                    "eecontrol_optuna: heartbeat of trial %s failed: %s", self.trial_id, err
                )

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def settle(study: optuna.Study, max_retries: int) -> list[int]:
    """Fails the running trials of dead workers and asks their parameters again.

    Stale heartbeats (any host) go through Optuna's ``fail_stale_trials`` (its retry
    callback enqueues the parameters); owners gone on this host through
    :func:`fail_dead_trials`, whose parameters are enqueued here, at most ``max_retries``
    times per original trial.

    Returns:
        The numbers of the trials failed now (by the liveness check).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = fail_dead_trials(study._storage, study._study_id)
    if not failed or max_retries <= 0:
        return failed
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.number not in failed or not t.params:
            continue
        origin = int(t.user_attrs.get(LOST_RETRY_ATTR, t.number))
        retries = sum(int(u.user_attrs.get(LOST_RETRY_ATTR, -1)) == origin for u in trials)
        if retries < max_retries:
            log.info("eecontrol_optuna: asking the parameters of lost trial %d again", t.number)
            study.enqueue_trial(dict(t.params), user_attrs={LOST_RETRY_ATTR: origin})
    return failed


@contextlib.contextmanager
def ask_lock(url: str) -> Iterator[None]:
    """Serialises "is the budget used? then ask" between the workers of a SQLite study.

    A SQLite study lives on one machine, so a file lock next to it covers every worker.
    Server databases get no lock: two workers may then ask the last trial at once, and
    the later one is told ``FAIL`` ("surplus") and stops.
    """
    if not url.startswith("sqlite:///"):
        yield
        return
    path = url[len("sqlite:///") :].split("?", 1)[0] + ".ask.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def budget_used(study: optuna.Study, first: int, below: int | None = None) -> int:
    """Trials of this sweep (numbered ``first`` or later, and below ``below``) that count
    toward its budget: running, finished or failed ones; not waiting ones, not retries of
    lost trials (they run on top, as in batch mode) and not surplus ones."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.number < first or (below is not None and t.number >= below):
            continue
        if t.state == TrialState.WAITING or LOST_RETRY_ATTR in t.user_attrs:
            continue
        if "failed_trial" in t.system_attrs:  # Optuna's retry of a stale-heartbeat trial
            continue
        if str(t.system_attrs.get(FAIL_REASON_ATTR, "")).startswith(SURPLUS):
            continue
        n += 1
    return n


def _failures(study: optuna.Study, first: int) -> int:
    return sum(
        t.number >= first for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    )


class SweepTask:
    """The task function the launcher runs: the app itself, or a worker of an async sweep.

    A job whose config has ``optuna_worker`` (an index) runs :meth:`work`; any other job
    (batch mode, a plain multirun) runs the app unchanged.

    Args:
        task_function: the app's task function.
        hydra_context: Hydra's context (its config loader composes each trial's config).
        config: the sweep's (master) config.
    """

    def __init__(
        self, task_function: TaskFunction, hydra_context: HydraContext, config: DictConfig
    ) -> None:
        self.task_function, self.hydra_context, self.config = task_function, hydra_context, config
        self.spec: WorkerSpec | None = None
        functools.update_wrapper(self, task_function)  # type: ignore[arg-type]

    def __call__(self, cfg: DictConfig) -> Any:
        index = cfg.get(WORKER_KEY) if hasattr(cfg, "get") else None
        if index is None or self.spec is None:
            return self.task_function(cfg)
        from eecontrol.util.redact import redact_hydra_files

        redact_hydra_files()  # the worker job's own .hydra files hold the sweep's overrides
        return self.work(int(index))

    def run_trial(self, overrides: list[str], number: int) -> JobReturn:
        """Composes trial ``number``'s config with Hydra and runs the app on it, in-process."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{number}"
            sweep_config.hydra.job.num = number
        HydraConfig.instance().set_config(sweep_config)
        return run_job(
            hydra_context=self.hydra_context,
            config=sweep_config,
            task_function=self.task_function,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def work(self, index: int, run: Callable[[list[str], int], JobReturn] | None = None) -> int:
        """Worker ``index``'s loop; returns how many trials it ran."""
        spec = self.spec
        assert spec is not None
        run = run or self.run_trial
        url = storage_from_env(None)
        storage = heartbeat_storage(url, spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the main process warned about the space already
            space = parse_search_space(spec.arguments)
        study = optuna.load_study(
            study_name=spec.study_name,
            storage=storage,
            sampler=build_sampler(spec.sampler, space.grid),
            pruner=build_pruner(spec.pruner),
        )
        watch = watch_parent(spec.parent)
        extender = load_extender(spec.custom_search_space)
        rows: list[list[Any]] = []
        key = f"{WORKER_ATTR}:{index}"
        ran = 0
        while True:
            if spec.deadline is not None and time.time() > spec.deadline:
                log.info("eecontrol_optuna: worker %d: timeout reached", index)
                break
            settle(study, spec.max_retries)
            if _failures(study, spec.first_number) >= spec.max_failures:
                log.warning(
                    "eecontrol_optuna: worker %d stops: %d failed trials", index, spec.max_failures
                )
                break
            if spec.max_failure_rate is not None:
                failed, total = failure_counts(study, spec.first_number)
                if total and failed / total > spec.max_failure_rate:
                    log.warning("eecontrol_optuna: worker %d stops: max_failure_rate", index)
                    break
            with ask_lock(url):  # one machine (SQLite): no two workers ask the last trial
                if budget_used(study, spec.first_number) >= spec.n_trials:
                    break
                if watch is not None:  # asked and registered at once: never left RUNNING
                    trial = watch.ask(
                        storage, lambda: ask_trial(study, space, extender, self.config)
                    )
                else:
                    trial = ask_trial(study, space, extender, self.config)
            if budget_used(study, spec.first_number, below=trial.number) >= spec.n_trials:
                # another worker asked the last trial at the same moment: give this one up
                storage.set_trial_system_attr(
                    trial._trial_id, FAIL_REASON_ATTR, f"{SURPLUS} the study was full when asked"
                )
                study.tell(trial, state=TrialState.FAIL)
                break
            mark_owner(storage, trial._trial_id)
            storage.set_trial_user_attr(trial._trial_id, WORKER_ATTR, index)
            ident = {**spec.ident, "number": trial.number}
            overrides = [
                *trial_overrides(trial.params, space),
                *wandb_overrides(self.config, spec.study_name, trial.number),
                f"++optuna_trial={config_text(ident)}",
            ]
            if watch is not None:
                watch.set_trial(storage, trial._trial_id)
            start = time.time()
            with _Heartbeat(storage, trial._trial_id, spec.heartbeat_interval):
                ret = run(overrides, trial.number)
            tell_job(study, trial._trial_id, trial.number, ret, spec.objectives)
            end = time.time()
            if watch is not None:
                watch.set_trial(None, None)
            state = storage.get_trial(trial._trial_id).state.name
            rows.append([trial.number, round(start, 3), round(end, 3), state])
            storage.set_study_user_attr(study._study_id, key, rows)
            ran += 1
        log.info("eecontrol_optuna: worker %d ran %d trial(s)", index, ran)
        return ran


__all__ = ["STORAGE_ENV", "WORKER_KEY", "SweepTask", "WorkerSpec", "settle"]
