"""The Optuna pruning callback: a job of an ``eecontrol_optuna`` sweep reports to its trial.

The sweeper passes each job its trial as config (``optuna_trial.study``,
``optuna_trial.number``, ``optuna_trial.monitor``, ...) and the storage URL through the
environment variable ``EECONTROL_OPTUNA_STORAGE`` (so a password never lands in a job's
config files, hyperparameter logs or W&B config). :class:`OptunaPruning` reports the
monitored value of every validation to the trial and stops the run when the study's pruner
prunes it; the stop is a decision like every other (``decisions.jsonl``, loggers).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback
from eecontrol.util.liveness import ParentWatch, mark_owner, watch_parent
from eecontrol.util.optuna_study import (
    METRICS_ATTR,
    PRUNED_ATTR,
    REPORT_STEPS,
    build_pruner,
    open_storage,
    redact,
    storage_from_env,
)

log = logging.getLogger(__name__)


class OptunaPruning(ControlCallback):
    """Reports every validation to an Optuna trial and stops the run when it is pruned.

    Rank zero reports ``monitor`` after every validation (sanity checks excluded) at step
    ``report_step`` (``check``: the validation index 0, 1, 2, ...; ``step``: the trainer's
    global step) and asks ``trial.should_prune()``; the answer goes to every rank through
    ``reduce_boolean_decision``. A pruned run is recorded on the trial
    (``eecontrol:pruned_at``); the sweeper then tells the study ``PRUNED``.

    Example::

        OptunaPruning(monitor="val/acc", study="digits", trial_number=3)

    Args:
        monitor: the metric to report, logged at validation.
        study: the study's name.
        trial_number: the trial's number in the study, >= 0.
        storage: the storage URL; None: ``$EECONTROL_OPTUNA_STORAGE``.
        report_step: ``check`` (validation index) or ``step`` (global step).
        pruner: the study's pruner: a config with ``_target_`` (as the sweeper passes it),
            a pruner, or None (no pruning, reports only). A pruner is not stored in the
            study, so every job builds the sweep's pruner itself.
        strict: a missing monitor is an error (False: a warning, the validation skipped).
        objectives: metrics to store on the trial when fit ends (``eecontrol:metrics``), for
            a multi-objective sweep's ``hydra.sweeper.objectives``; ``epochs`` is the
            number of epochs trained. In a multi-objective study nothing is reported
            (Optuna prunes single-objective studies only).
        parent: the owner id (``host:pid:start``) of the sweep's main process: this job
            fails its trial and ends when that process is gone (a ``kill -9`` of the
            sweep); None: no watch.
    """

    def __init__(
        self,
        monitor: str,
        study: str,
        trial_number: int,
        storage: str | None = None,
        report_step: str = "check",
        pruner: Mapping[str, Any] | BasePruner | None = None,
        strict: bool = True,
        parent: str | None = None,
        objectives: list[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be a metric name, got {monitor!r}.")
        if not isinstance(study, str) or not study:
            raise ValueError(f"`study` must be a study name, got {study!r}.")
        if isinstance(trial_number, bool) or not isinstance(trial_number, int) or trial_number < 0:
            raise ValueError(f"`trial_number` must be an integer >= 0, got {trial_number!r}.")
        if report_step not in REPORT_STEPS:
            raise ValueError(
                f"`report_step` must be one of {list(REPORT_STEPS)}, got {report_step!r}."
            )
        self.monitor, self.study_name, self.trial_number = monitor, study, int(trial_number)
        self.report_step, self.strict = report_step, bool(strict)
        self.pruner = build_pruner(pruner)
        self.pruner_name = type(self.pruner).__name__
        self._maximize = True
        self._storage_arg = storage
        self.parent = parent
        self.objectives = [str(o) for o in objectives] if objectives else None
        self._watch: ParentWatch | None = None
        self._reporting = True
        self._trial: optuna.Trial | None = None
        self._checks = 0
        self._reported: list[float] = []

    def _config(self) -> dict[str, Any]:
        config = {"monitor": self.monitor, "study": self.study_name}
        return {**config, **self._attributes("trial_number", "report_step")}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_trial"] = None  # a database connection does not pickle; reopened at fit start
        state["_watch"] = None  # a thread; started again at fit start
        return state

    @property
    def best_so_far(self) -> float | None:
        """The best reported value (in the study's direction), or None before any report."""
        if not self._reported:
            return None
        return max(self._reported) if self._maximize else min(self._reported)

    def _open(self) -> None:
        url = storage_from_env(self._storage_arg)
        storage = open_storage(url)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner)
        self._maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                study._study_id, self.trial_number
            )
        except KeyError as err:
            raise ValueError(
                f"OptunaPruning: study {self.study_name!r} in {redact(url)} has no trial "
                f"{self.trial_number}."
            ) from err
        state = storage.get_trial(trial_id).state
        if state != TrialState.RUNNING:
            raise ValueError(
                f"OptunaPruning: trial {self.trial_number} of study {self.study_name!r} is "
                f"{state.name}, not RUNNING: it was finished by an earlier job; start a new trial "
                f"through the sweeper."
            )
        mark_owner(storage, trial_id)
        self._trial = optuna.Trial(study, trial_id)
        if study._is_multi_objective():
            log.info("OptunaPruning: multi-objective study %r: no reports", self.study_name)
            self._reporting = False
        self._watch = watch_parent(self.parent)
        if self._watch is not None:
            self._watch.set_trial(storage, trial_id)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        if not self.objectives or not trainer.is_global_zero or self._trial is None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics["epochs"] = float(trainer.current_epoch)
        stored = {o: metrics[o] for o in self.objectives if o in metrics}
        self._trial.storage.set_trial_system_attr(self._trial._trial_id, METRICS_ATTR, stored)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._watch is not None:  # the process stays watched; no trial of it to fail now
            self._watch.set_trial(None, None)
        super().teardown(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if trainer.is_global_zero:
            self._open()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.stopped_epoch is not None:
            return
        index = self._checks
        self._checks += 1
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            msg = (
                f"OptunaPruning: monitor {self.monitor!r} was not logged at validation {index}; "
                f"available: {sorted(trainer.callback_metrics)}."
            )
            if self.strict:
                raise KeyError(msg)
            log.warning(msg)
            return
        value = float(value)
        step = index if self.report_step == "check" else int(trainer.global_step)
        prune = False
        if trainer.is_global_zero and self._trial is not None and self._reporting:
            if math.isfinite(value):
                self._reported.append(value)
                self._trial.report(value, step)
                prune = bool(self._trial.should_prune())
            else:
                prune = True  # NaN/inf never passes silently: the trial cannot win
            if prune:
                self._trial.storage.set_trial_system_attr(self._trial._trial_id, PRUNED_ATTR, step)
        reason = (
            f"the study's {self.pruner_name} pruned trial {self.trial_number} at "
            f"{self.report_step} {step}"
        )
        self._stop(
            trainer,
            prune,
            reason,
            {"monitor": self.monitor, "value": value, "report_step": step},
        )

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["OptunaPruning/trial"] = self.trial_number
        out["OptunaPruning/reports"] = len(self._reported)
        return out

    def _progress_state(self) -> dict[str, Any]:
        return {"checks": self._checks, "reported": list(self._reported)}

    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self._checks = int(state.get("checks", 0))
        self._reported = [float(v) for v in state.get("reported", [])]
