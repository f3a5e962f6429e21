"""Moved to :mod:`eecontrol.util.optuna_study` (floor 0: the pruning callback and the curve
store use it too); its names stay importable from here."""

from __future__ import annotations

from eecontrol.util.optuna_study import (
    METRICS_ATTR,
    OBJECTIVE_ATTR,
    PRUNED_ATTR,
    REPORT_STEPS,
    STORAGE_ENV,
    TRIAL_KEY,
    build_pruner,
    driver_url,
    open_storage,
    rdb_storage,
    redact,
    storage_from_env,
    storage_url,
)

__all__ = [
    "METRICS_ATTR",
    "OBJECTIVE_ATTR",
    "PRUNED_ATTR",
    "REPORT_STEPS",
    "STORAGE_ENV",
    "TRIAL_KEY",
    "build_pruner",
    "driver_url",
    "open_storage",
    "rdb_storage",
    "redact",
    "storage_from_env",
    "storage_url",
]
