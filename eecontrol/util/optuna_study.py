"""What the sweeper, its workers and its jobs share, without Lightning (a light import).

The trial's identity key and attribute names, the storage URL's environment variable,
URL redaction, opening an Optuna RDB storage and building a pruner from its config.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optuna.pruners import BasePruner, NopPruner
from optuna.storages import RDBStorage

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

STORAGE_ENV = "EECONTROL_OPTUNA_STORAGE"
TRIAL_KEY = "optuna_trial"
PRUNED_ATTR = "eecontrol:pruned_at"
OBJECTIVE_ATTR = "eecontrol:objective"
METRICS_ATTR = "eecontrol:metrics"  # {name: value} a job stores for hydra.sweeper.objectives
REPORT_STEPS = ("check", "step")

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/:@]*:)(?P<pw>[^@/]*)(?P<at>@)")


def redact(url: str) -> str:
    """A database URL with its password replaced by ``***`` (for logs and files).

    Both forms: ``user:PASSWORD@host`` and credential query parameters (``?password=``).
    """
    from eecontrol.util.redact import redact_text

    return redact_text(_PASSWORD.sub(lambda m: f"{m['head']}***{m['at']}", str(url)))


def rdb_storage(url: str, attempts: int = 6, **kwargs: Any) -> RDBStorage:
    """``RDBStorage(url, **kwargs)``, retried while another process creates the same schema.

    Two processes that open a new database at once (the sweeper and its first workers, or
    ``optuna-dashboard`` started early) race to create Optuna's tables and stamp its
    alembic version; the loser gets an ``IntegrityError`` or ``OperationalError``. Once the
    winner is done the schema exists, so a retry succeeds.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return RDBStorage(url, **kwargs)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str, timeout: float = 60.0) -> RDBStorage:
    """An Optuna RDB storage for ``url``; SQLite writers wait ``timeout`` s for a lock."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": timeout}
    return rdb_storage(driver_url(url), engine_kwargs=kwargs)


def storage_from_env(storage: str | None = None) -> str:
    """The storage URL: ``storage`` if given, else ``$EECONTROL_OPTUNA_STORAGE``.

    Raises:
        ValueError: when neither is set.
    """
    url = storage or os.environ.get(STORAGE_ENV)
    if not url:
        raise ValueError(
            f"OptunaPruning: no study storage: pass `storage` or set {STORAGE_ENV} (the "
            f"eecontrol_optuna sweeper sets it for its jobs)."
        )
    return url


def build_pruner(pruner: Mapping[str, Any] | BasePruner | None) -> BasePruner:
    """A pruner from a config with ``_target_`` (or a pruner, or None: no pruning).

    Raises:
        ValueError: when the config does not make an Optuna pruner.
    """
    if pruner is None:
        return NopPruner()
    if isinstance(pruner, BasePruner):
        return pruner
    import hydra.utils

    obj = hydra.utils.instantiate(pruner)
    if obj is None:
        return NopPruner()
    if not isinstance(obj, BasePruner):
        raise ValueError(
            f"`pruner` must make an optuna.pruners.BasePruner, got {type(obj).__name__} "
            f"from {dict(pruner)!r}."
        )
    return obj


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def driver_url(url: str) -> str:
    """The URL SQLAlchemy connects with: ``postgresql://`` gets the installed driver.

    ``postgresql://`` names SQLAlchemy's default PostgreSQL driver, psycopg2; the ``slurm``
    extra (and the dev tools) install psycopg 3. Where psycopg2 is missing and psycopg is
    there, ``postgresql://`` connects as ``postgresql+psycopg://``, so both spellings work
    with the driver eecontrol installs. An explicit driver (``+psycopg2``) is kept, and
    the URL users wrote is what logs and files show (redacted).
    """
    text = str(url)
    if text.startswith("postgresql://") and not _has_module("psycopg2") and _has_module("psycopg"):
        return "postgresql+psycopg://" + text[len("postgresql://") :]
    return text


def storage_url(store: str | Path) -> str:
    """Turns a path into a SQLite URL; returns URLs (``scheme://...``) unchanged."""
    text = str(store)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
