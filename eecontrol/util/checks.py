"""Argument checks that are not math: a curve store's address and a study's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_store(store: Any) -> str | None:
    """Validates a curve-store argument: None / "" (no store), a SQLite path or a database URL.

    Raises:
        ValueError: naming ``store`` for anything else (``store=123`` is not a path).
    """
    if store is None or store == "":
        return None
    if isinstance(store, bool) or not isinstance(store, str | Path):
        raise ValueError(
            f"`store` must be a SQLite file path or a database URL string "
            f"(e.g. postgresql://user:pass@host/db), got {store!r}."
        )
    return str(store)


def check_study_name(study_name: Any) -> str:
    """Validates a study name: a non-empty string (``study_name=None`` is an error)."""
    if not isinstance(study_name, str) or not study_name.strip():
        raise ValueError(f"`study_name` must be a non-empty string, got {study_name!r}.")
    return study_name
