"""Moved to :mod:`eecontrol.util.liveness` (floor 0: the pruning callback and the curve
store use it too); its names stay importable from here."""

from __future__ import annotations

from eecontrol.util.liveness import (
    FAIL_REASON_ATTR,
    OWNER_ATTR,
    ParentWatch,
    fail_dead_trials,
    mark_owner,
    owner_alive,
    owner_id,
    watch_parent,
)

__all__ = [
    "FAIL_REASON_ATTR",
    "OWNER_ATTR",
    "ParentWatch",
    "fail_dead_trials",
    "mark_owner",
    "owner_alive",
    "owner_id",
    "watch_parent",
]
