"""The core of the ``eecontrol_optuna`` Hydra sweeper: Optuna ask/tell through any launcher.

Two modes. ``async`` (the default): launch ``n_jobs`` worker jobs
(:mod:`eecontrol.sweep.worker`), each asking the shared study for trials and running them
in-process until the sweep's trials are done; a pruned trial frees its worker at once.
``batch``, described below: ask the study for a batch of ``n_jobs`` trials, turn each into
overrides plus its identity (``optuna_trial.*``; the storage URL goes through ``$EECONTROL_OPTUNA_STORAGE``),
launch the batch with the configured launcher (basic, joblib, submitit, ...), and tell the
study each result. A job's pruning callback reports to its trial and marks it when pruned.

Faults never end the sweep: a job that raised becomes a ``FAIL`` trial; a batch the
launcher could not finish (a killed joblib worker raises ``TerminatedWorkerError`` for the
whole batch, a killed submitit job fails ``results()``) is read back from the storage: a
job that finished keeps its result (it stored its objective), the others become ``FAIL``
and, up to ``max_retries`` times, are asked again with the same parameters. Rerunning the
same command loads the study and runs only what is missing: ``n_trials`` counts finished
(``COMPLETE`` or ``PRUNED``) trials, and failed grid points or failed trials' parameters
are asked again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig
from optuna.pruners import NopPruner
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import TrialState

from eecontrol.sweep.options import (
    DIRECTIONS,
    MODES,
    _plain,
    check_directions,
    check_enqueue_trials,
    check_options,
    config_text,
)
from eecontrol.sweep.outcome import recover_trials, tell_job
from eecontrol.sweep.results import DEFAULT_DB, RESULTS_FILE, write_results
from eecontrol.sweep.sampling import build_sampler
from eecontrol.sweep.space import (
    SearchSpace,
    params_to_arguments,
    parse_search_space,
    trial_overrides,
)
from eecontrol.sweep.study import (
    RETRY_ATTR,
    open_study,
    queue_grid,
    queue_trials,
)
from eecontrol.sweep.worker import (
    WORKER_KEY,
    SweepTask,
    WorkerSpec,
    ask_trial,
    budget_used,
    failure_counts,
    load_extender,
    settle,
    wandb_overrides,
)
from eecontrol.util.liveness import (
    FAIL_REASON_ATTR,
    OWNER_ATTR,
    owner_id,
)
from eecontrol.util.optuna_study import (
    STORAGE_ENV,
    TRIAL_KEY,
    build_pruner,
    redact,
    storage_url,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DB",
    "DIRECTIONS",
    "MODES",
    "RESULTS_FILE",
    "RETRY_ATTR",
    "SweeperCore",
    "config_text",
]


def _first_line(err: BaseException) -> str:
    """``Type: the message's first line`` (at most 300 characters), for a log line."""
    text = str(err).strip()
    return f"{type(err).__name__}: {(text.splitlines()[0] if text else '')[:300]}"


class SweeperCore:
    """Optuna ask/tell over a Hydra launcher (the ``eecontrol_optuna`` sweeper's work).

    Args:
        sampler: a sampler config with ``_target_`` (default: ``TPESampler``); a
            ``GridSampler`` gets the grid from the search space and runs it in order.
        pruner: a pruner config with ``_target_``, or None (no pruning).
        direction: ``maximize``/``minimize`` (or ``max``/``min``); None: from the app
            config's ``optimized_mode`` (``max``/``min``), the mode of ``optimized_metric``.
            A list of two or more makes a multi-objective study (no pruning): each job
            returns one value per direction, or names them in ``objectives``.
        storage: a database URL or a SQLite file path; None: SQLite ``optuna.db`` in the
            sweep directory.
        study_name: the study; None: the sweep directory's name.
        n_trials: finished trials the study should hold (resumed studies count theirs), >= 1;
            None with a grid sampler: every grid point.
        n_jobs: trials per batch (run in parallel by a parallel launcher), >= 1.
        timeout: seconds after which no new batch starts, or None.
        max_retries: times a lost job (killed, its batch broken) is asked again with the same
            parameters within one sweep, >= 0. A job that raised is not retried.
        fail_on_error: exit non-zero at the end if any trial of this sweep failed.
        monitor: the metric jobs report; None: the app config's ``optimized_metric``.
        report_step: ``check`` (validation index) or ``step`` (global step).
        params: the search space in Hydra's override grammar.
        mode: ``async`` (each of ``n_jobs`` launched jobs is a worker that asks the study
            for trials until it is full: a pruned trial frees its worker at once) or
            ``batch`` (ask ``n_jobs`` trials, launch them, wait for all, tell).
        heartbeat_interval: seconds between a running trial's heartbeats (async mode), or
            None: off. A trial without a heartbeat for ``grace_period`` s is ``FAIL``.
        grace_period: seconds; None: ``2 * heartbeat_interval + 5``.
        max_failure_rate: in [0, 1] or None (no limit): the sweep stops, with an error
            naming the counts, once more than this fraction of its trials failed.
        enqueue_trials: parameter dicts run first (a known-good configuration), unless a
            trial with the same parameters exists.
        objectives: for a multi-objective study, the job's metrics to use, one per
            direction (e.g. ``[val/acc, epochs]``: ``epochs`` is the epochs trained);
            None: the job returns a list of values.
        custom_search_space: ``module.function`` called as ``fn(cfg, trial)`` after each
            ask (the official plugin's signature): it may ``trial.suggest_*`` more,
            conditional parameters, which the job gets as overrides.
    """

    def __init__(
        self,
        sampler: Any = None,
        pruner: Any = None,
        direction: str | Sequence[str] | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int | None = 20,
        n_jobs: int = 2,
        timeout: float | None = None,
        max_retries: int = 1,
        fail_on_error: bool = False,
        monitor: str | None = None,
        report_step: str = "check",
        params: Mapping[str, Any] | None = None,
        mode: str = "async",
        heartbeat_interval: int | None = 10,
        grace_period: int | None = None,
        max_failure_rate: float | None = None,
        enqueue_trials: Sequence[Mapping[str, Any]] | None = None,
        custom_search_space: str | None = None,
        objectives: Sequence[str] | None = None,
    ) -> None:
        self.directions, self.direction, self.objectives = check_directions(direction, objectives)
        check_options(
            n_trials,
            n_jobs,
            max_retries,
            timeout,
            report_step,
            mode,
            heartbeat_interval,
            grace_period,
            max_failure_rate,
        )
        self.max_failure_rate = None if max_failure_rate is None else float(max_failure_rate)
        self.enqueue_trials = check_enqueue_trials(enqueue_trials)
        self.custom_search_space = custom_search_space
        self._extender = load_extender(custom_search_space)
        self.mode = mode
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.task: SweepTask | None = None
        self.sampler_cfg = _plain(sampler)
        self.pruner_cfg = _plain(pruner)
        self.storage = storage
        self.study_name = study_name
        self.n_trials = None if n_trials is None else int(n_trials)
        self.n_jobs = int(n_jobs)
        self.timeout = None if timeout is None else float(timeout)
        self.max_retries, self.fail_on_error = int(max_retries), bool(fail_on_error)
        self.monitor, self.report_step = monitor, report_step
        self.params = _plain(params) or {}
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.sweep_dir: Path | None = None
        self.failures: list[str] = []

    # --- set-up -----------------------------------------------------------------------

    def setup(self, config: DictConfig, launcher: Any, task: SweepTask | None = None) -> None:
        """Keeps the composed config, the instantiated launcher and its task (a
        :class:`~eecontrol.sweep.worker.SweepTask`; without it only batch mode runs)."""
        self.config, self.launcher, self.task = config, launcher, task
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def _storage_url(self) -> str:
        assert self.sweep_dir is not None
        if self.storage:  # a URL, or a SQLite file path as the curve store takes it
            return storage_url(str(self.storage))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.sweep_dir / DEFAULT_DB).resolve()}"

    def _monitor(self) -> str:
        assert self.config is not None
        monitor = self.monitor or self.config.get("optimized_metric")
        if not monitor:
            raise ValueError(
                "eecontrol_optuna: set `optimized_metric` in the app's config or "
                "hydra.sweeper.monitor: the metric the jobs report and return."
            )
        return str(monitor)

    def _direction(self) -> str:
        """The study's direction: ``hydra.sweeper.direction`` or the app's ``optimized_mode``."""
        assert self.config is not None
        mode = self.config.get("optimized_mode")
        from_mode = DIRECTIONS.get(str(mode)) if mode is not None else None
        if self.direction is None and from_mode is None:
            raise ValueError(
                "eecontrol_optuna: set hydra.sweeper.direction (maximize | minimize) or the app "
                f"config's optimized_mode (max | min); got optimized_mode={mode!r}."
            )
        if self.direction is not None and from_mode is not None and from_mode != self.direction:
            raise ValueError(
                f"eecontrol_optuna: hydra.sweeper.direction={self.direction} contradicts "
                f"optimized_mode={mode} of optimized_metric={self.config.get('optimized_metric')}."
            )
        return self.direction or str(from_mode)

    def _sampler(self, space: SearchSpace) -> BaseSampler:
        return build_sampler(self.sampler_cfg, space.grid)

    # --- the sweep --------------------------------------------------------------------

    def sweep(self, arguments: Sequence[str]) -> None:
        """Runs the sweep: resumes the study, then asks, launches and tells batches."""
        assert self.config is not None and self.launcher is not None
        space = parse_search_space(params_to_arguments(self.params) + list(arguments))
        if not space.distributions:
            raise ValueError(
                "eecontrol_optuna: the search space is empty: give hydra.sweeper.params (e.g. "
                "model.optimizer.lr: tag(log, interval(1e-4, 1e-2))) or sweep overrides."
            )
        if self.directions is None:
            self.direction = self._direction()
        sampler = self._sampler(space)
        pruner = build_pruner(self.pruner_cfg)
        if self.directions is not None and not isinstance(pruner, NopPruner):
            raise ValueError(
                f"eecontrol_optuna: Optuna cannot prune a multi-objective study "
                f"(direction={self.directions}); use hydra/sweeper/eecontrol_pruner=none, got "
                f"{type(pruner).__name__}."
            )
        url = self._url = self._storage_url()
        name = self.study_name or Path(str(self.sweep_dir)).name
        study = open_study(url, name, sampler, pruner, self.direction, self.directions)
        os.environ[STORAGE_ENV] = url  # the jobs' storage (never written into their configs)
        log.info(
            "eecontrol_optuna: study %r in %s, sampler %s, pruner %s, %s %s",
            name,
            redact(url),
            type(sampler).__name__,
            type(pruner).__name__,
            self.directions or self.direction,
            self.objectives or self._monitor(),
        )
        self._recover(study)
        first = len(study.get_trials(deepcopy=False))  # this sweep's trials: from here on
        names = list(space.distributions)
        if isinstance(sampler, GridSampler):
            budget = queue_grid(study, space.grid_points(), names, self.n_trials)
        else:
            budget = queue_trials(study, names, self.n_trials, self.enqueue_trials)
        log.info("eecontrol_optuna: %d trial(s) to run (%s mode)", budget, self._mode())
        if self._mode() == "async":
            self._run_async(study, name, space, list(arguments), budget, first)
            self._write_results(study, url)
            self._raise_on_failures()
            return
        started = time.monotonic()
        self._retries: dict[int, int] = {}
        self._extra = 0  # lost jobs asked again: run on top of the budget
        asked = 0
        while asked < budget + self._extra:
            if self.timeout is not None and time.monotonic() - started > self.timeout:
                log.info("eecontrol_optuna: timeout of %.0f s reached", self.timeout)
                break
            n = min(self.n_jobs, budget + self._extra - asked)
            batch = [ask_trial(study, space, self._extender, self.config) for _ in range(n)]
            asked += n
            self._run_batch(study, batch, space)
            self._check_failure_rate(study, first)
        self._write_results(study, url)
        self._raise_on_failures()

    def _check_failure_rate(self, study: optuna.Study, first: int) -> None:
        """Stops the sweep once more than ``max_failure_rate`` of its trials failed."""
        if self.max_failure_rate is None:
            return
        failed, total = failure_counts(study, first)
        if total and failed / total > self.max_failure_rate:
            assert self.sweep_dir is not None
            self._write_results(study, self._url)
            raise RuntimeError(
                f"eecontrol_optuna: {failed} of {total} trials of this sweep failed "
                f"({failed / total:.2f} > hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate}); the sweep stops. First failures: "
                + "; ".join(self.failures[:3])
            )

    def _raise_on_failures(self) -> None:
        if self.failures and self.fail_on_error:
            raise RuntimeError(
                f"eecontrol_optuna: {len(self.failures)} trial(s) failed (fail_on_error=true): "
                + "; ".join(self.failures[:5])
            )

    def _mode(self) -> str:
        """``async`` when asked for and the launcher runs this sweeper's task, else ``batch``."""
        if self.mode == "async" and self.task is None:
            log.warning("eecontrol_optuna: mode=async needs the sweeper's task; running batches")
            return "batch"
        return self.mode

    def _ident(self, study_name: str) -> dict[str, Any]:
        """A job's ``optuna_trial`` config, less its trial number."""
        return {
            "study": study_name,
            "monitor": self._monitor(),
            "report_step": self.report_step,
            "pruner": self.pruner_cfg,
            "parent": owner_id(),
            **({"objectives": list(self.objectives)} if self.objectives else {}),
        }

    def _run_async(
        self,
        study: optuna.Study,
        name: str,
        space: SearchSpace,
        arguments: list[str],
        budget: int,
        first: int,
    ) -> None:
        """Launches ``n_jobs`` workers that fill the study; again while workers were lost."""
        assert self.task is not None
        deadline = None if self.timeout is None else time.time() + self.timeout
        self.task.spec = WorkerSpec(
            study_name=name,
            arguments=params_to_arguments(self.params) + arguments,
            sampler=self.sampler_cfg,
            pruner=self.pruner_cfg,
            n_trials=budget,
            first_number=first,
            max_failures=max(1, budget),
            max_retries=self.max_retries,
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace_period,
            parent=owner_id(),
            deadline=deadline,
            ident=self._ident(name),
            max_failure_rate=self.max_failure_rate,
            custom_search_space=self.custom_search_space,
            objectives=self.objectives,
        )
        rounds = 0
        while budget_used(study, first) < budget:
            if deadline is not None and time.time() > deadline:
                log.info("eecontrol_optuna: timeout of %.0f s reached", self.timeout)
                break
            before = budget_used(study, first)
            n = min(self.n_jobs, budget - before)
            fixed = trial_overrides({}, space)  # the command line's own (hparams_search=...)
            workers = [
                [*fixed, f"++{WORKER_KEY}={i}", f"hydra.sweep.subdir=workers/{i}"] for i in range(n)
            ]
            log.info(
                "eecontrol_optuna: %d asynchronous worker(s) for %d trial(s)", n, budget - before
            )
            try:
                returns = self.launcher.launch(workers, initial_job_idx=0)
            except Exception as err:  # a lost worker must not end the sweep
                log.warning(
                    "eecontrol_optuna: the launcher failed for the workers (%s); the "
                    "study keeps what they finished",
                    _first_line(err),
                )
                returns = []
            for i, ret in enumerate(returns):
                if ret is not None and ret.status == JobStatus.FAILED:
                    log.warning("eecontrol_optuna: worker %d raised %r", i, ret._return_value)
            self._recover(study)
            settle(study, self.max_retries)
            rounds += 1
            if budget_used(study, first) == before or rounds > self.max_retries + 1:
                break  # no progress (every trial fails) or lost workers beyond the retries
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number >= first:
                reason = str(t.system_attrs.get(FAIL_REASON_ATTR, "failed"))
                self.failures.append(f"trial {t.number}: {reason[:200]}")
        self._check_failure_rate(study, first)

    def _recover(self, study: optuna.Study) -> None:
        """Fails trials left running by dead processes (a killed earlier sweep or its jobs)."""
        recover_trials(study)

    def _job_overrides(self, trial: optuna.Trial, space: SearchSpace) -> list[str]:
        ident = {**self._ident(trial.study.study_name), "number": trial.number}
        return [
            *trial_overrides(trial.params, space),
            *wandb_overrides(self.config, trial.study.study_name, trial.number),
            f"++{TRIAL_KEY}={config_text(ident)}",
        ]

    def _run_batch(
        self,
        study: optuna.Study,
        batch: list[optuna.Trial],
        space: SearchSpace,
    ) -> None:
        storage = study._storage
        for t in batch:
            storage.set_trial_system_attr(t._trial_id, OWNER_ATTR, owner_id())
        overrides = [self._job_overrides(t, space) for t in batch]
        numbers = [t.number for t in batch]
        returns: Sequence[JobReturn | None]
        try:
            if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
                raise RuntimeError(f"trial numbers of one batch are not consecutive: {numbers}")
            returns = self.launcher.launch(overrides, initial_job_idx=numbers[0])
        except Exception as err:  # one job's fault must not end the sweep
            log.warning(
                "eecontrol_optuna: the launcher failed for trials %s (%s); reading their "
                "results from the study",
                numbers,
                _first_line(err),
            )
            returns = [None] * len(batch)
        for trial, ret in zip(batch, returns):
            lost = self._tell(study, trial, ret)
            if lost:
                origin = int(trial.user_attrs.get(RETRY_ATTR, trial.number))
                retries = self._retries
                if retries.get(origin, 0) < self.max_retries:
                    retries[origin] = retries.get(origin, 0) + 1
                    self._extra += 1
                    log.info(
                        "eecontrol_optuna: trial %d was lost; asking its parameters again "
                        "(retry %d of %d)",
                        trial.number,
                        retries[origin],
                        self.max_retries,
                    )
                    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_ATTR: origin})

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn | None) -> bool:
        """Tells the study one job's result; returns whether the job was lost (no result)."""
        error = tell_job(study, trial._trial_id, trial.number, ret, self.objectives)
        if error is None:
            return False
        self.failures.append(f"trial {trial.number}: {error[:200]}")
        return error.startswith("lost: ")

    # --- results ------------------------------------------------------------------------

    def _write_results(self, study: optuna.Study, url: str) -> None:
        """Writes ``optimization_results.yaml`` (best parameters and value, trial counts)."""
        assert self.sweep_dir is not None
        write_results(
            study,
            self.sweep_dir,
            url,
            direction=self.direction,
            directions=self.directions,
            objectives=self.objectives,
            metric=self._monitor(),
        )
