"""The job side of an ``eecontrol_optuna`` sweep: the trial's identity, the pruning callback
(:class:`~eecontrol.callbacks.optuna_pruning.OptunaPruning`, re-exported here) for a job
of a sweep, and the job's objective stored on its trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eecontrol.callbacks.optuna_pruning import OptunaPruning
from eecontrol.util.optuna_study import (
    OBJECTIVE_ATTR,
    PRUNED_ATTR,
    REPORT_STEPS,
    STORAGE_ENV,
    TRIAL_KEY,
    build_pruner,
    open_storage,
    redact,
    storage_from_env,
)

__all__ = [
    "OBJECTIVE_ATTR",
    "PRUNED_ATTR",
    "REPORT_STEPS",
    "STORAGE_ENV",
    "TRIAL_KEY",
    "OptunaPruning",
    "build_pruner",
    "open_storage",
    "pruning_callbacks",
    "record_objective",
    "redact",
    "storage_from_env",
    "trial_config",
]


def trial_config(cfg: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The job's trial identity (``cfg.optuna_trial``) or None outside a sweep."""
    value = cfg.get(TRIAL_KEY) if hasattr(cfg, "get") else None
    return value or None


def pruning_callbacks(cfg: Mapping[str, Any], existing: list[Any]) -> list[OptunaPruning]:
    """``[OptunaPruning]`` for a job of an ``eecontrol_optuna`` sweep, unless one is there."""
    ident = trial_config(cfg)
    if ident is None or any(isinstance(cb, OptunaPruning) for cb in existing):
        return []
    return [
        OptunaPruning(
            monitor=str(ident["monitor"]),
            study=str(ident["study"]),
            trial_number=int(ident["number"]),
            report_step=str(ident.get("report_step", "check")),
            pruner=ident.get("pruner"),
            parent=ident.get("parent"),
            objectives=list(ident["objectives"]) if ident.get("objectives") else None,
        )
    ]


def record_objective(cfg: Mapping[str, Any], value: float | None) -> None:
    """Stores the job's objective on its trial, so a sweep whose launcher lost the job's
    return value (a batch error) still gets it. A no-op outside a sweep."""
    ident = trial_config(cfg)
    if ident is None or value is None:
        return
    storage = open_storage(storage_from_env(None))
    study_id = storage.get_study_id_from_name(str(ident["study"]))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(ident["number"]))
    storage.set_trial_system_attr(trial_id, OBJECTIVE_ATTR, float(value))
