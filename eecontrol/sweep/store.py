"""Moved to :mod:`eecontrol.core.curves.store` (floor 0: ``LearningCurveStopping`` reads it
without importing the sweep layer); its names stay importable from here."""

from __future__ import annotations

from eecontrol.core.curves.store import DIRECTIONS, STATES, CurveStore, StoredRun, storage_url

__all__ = ["DIRECTIONS", "STATES", "CurveStore", "StoredRun", "storage_url"]
