"""A curve store shared by the workers of a sweep, on an Optuna RDB storage.

Every run is one Optuna trial of one study: its curve is the trial's intermediate values
(one per validation, keyed by the validation index), its hyperparameters and positions
are user attributes, and its end is the trial state (``COMPLETE``: trained to its end;
``PRUNED``: stopped early; ``FAIL``: crashed). Concurrency is the database's job
(SQLAlchemy transactions through :class:`optuna.storages.RDBStorage`): a SQLite file by
default (no server, fine for a handful of local workers), a server database by URL
(``postgresql://user:pass@host/db``, driver psycopg 3) when workers run on many machines. No file locks
are written here.

A study written by this store is an ordinary Optuna study: ``optuna-dashboard <url>``
shows its curves.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from eecontrol.util.checks import check_store, check_study_name
from eecontrol.util.liveness import fail_dead_trials, mark_owner
from eecontrol.util.optuna_study import driver_url, storage_url
from eecontrol.util.redact import redact_text, redact_url

__all__ = ["CurveStore", "StoredRun", "storage_url"]

if TYPE_CHECKING:
    from eecontrol.core.curves import FinishedRun

STATES = {"complete": TrialState.COMPLETE, "stopped": TrialState.PRUNED, "failed": TrialState.FAIL}
DIRECTIONS = {"max": "maximize", "min": "minimize"}


def _root_cause(err: BaseException | None) -> str:
    """The innermost error's text (Optuna wraps database errors in a generic message)."""
    while err is not None and (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {err}" if err is not None else "unknown error"


def _check_sqlite_is_a_curve_store(url: str) -> None:
    """Refuses an existing SQLite file that holds another application's tables.

    Raises:
        ValueError: naming ``store`` and the tables found (Optuna would add its own to it).
    """
    import sqlite3

    raw = url.split("sqlite:///", 1)[-1].split("?", 1)[0]
    path = Path(raw[len("file:") :] if raw.startswith("file:") else raw)
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            tables = sorted(
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            )
    except sqlite3.OperationalError:
        return  # locked by another writer: opening it below reports that
    except sqlite3.DatabaseError as err:
        raise ValueError(f"`store` {path} is not a SQLite database ({err}).") from err
    if tables and "studies" not in tables:
        raise ValueError(
            f"`store` {path} is a SQLite database of another application (tables "
            f"{tables[:8]}); the curve store would add its tables to it. Give a new file or "
            f"an existing curve store."
        )


@dataclass(frozen=True)
class StoredRun:
    """One run read back from the store.

    Args:
        run_id: the trial's storage id.
        number: the trial's number in the study.
        state: ``running``, ``complete``, ``stopped``, ``failed`` or Optuna's state name.
        values: the curve, one value per validation, in order.
        hparams: numeric hyperparameters.
        result: the run's result (its best value), when finished.
    """

    run_id: int
    number: int
    state: str
    values: tuple[float, ...]
    hparams: dict[str, float] = field(default_factory=dict)
    result: float | None = None

    def as_finished(self) -> FinishedRun:
        """This run as a :class:`~eecontrol.core.curves.FinishedRun`."""
        from eecontrol.core.curves import FinishedRun

        return FinishedRun(self.values, self.hparams, self.result)


def _state_name(state: TrialState) -> str:
    names = {v: k for k, v in STATES.items()}
    return "running" if state == TrialState.RUNNING else names.get(state, state.name.lower())


class CurveStore:
    """Curves and hyperparameters of a sweep's runs in one Optuna study.

    Example::

        store = CurveStore("logs/sweep/curves.db", study_name="digits", mode="max")
        run = store.start_run({"lr": 1e-3})
        store.report(run, 0, 0.52)
        store.finish(run, 0.97, "complete")
        finished = [r.as_finished() for r in store.runs("complete")]

    Args:
        url: a database URL or a file path (SQLite).
        study_name: the study that holds this sweep's runs.
        mode: ``max`` or ``min`` (the study's direction).
        timeout: seconds a SQLite writer waits for a lock held by another worker.
        retries: attempts at opening the storage (two workers creating the schema at
            the same moment can collide once).
    """

    def __init__(
        self,
        url: str | Path,
        study_name: str = "eecontrol-curves",
        mode: str = "max",
        timeout: float = 60.0,
        retries: int = 5,
    ) -> None:
        if mode not in DIRECTIONS:
            raise ValueError(f"`mode` must be one of {list(DIRECTIONS)}, got {mode!r}.")
        self.url = storage_url(check_store(url))
        self.study_name = check_study_name(study_name)
        self.mode = mode
        engine_kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": timeout}
            _check_sqlite_is_a_curve_store(self.url)
        last: Exception | None = None
        for attempt in range(retries):
            try:
                self.storage = RDBStorage(driver_url(self.url), engine_kwargs=engine_kwargs)
                study = optuna.create_study(
                    storage=self.storage,
                    study_name=self.study_name,
                    direction=DIRECTIONS[mode],
                    load_if_exists=True,
                )
                break
            except Exception as err:  # a schema race between two new workers
                last = err
                time.sleep(0.2 * (attempt + 1))
        else:
            cause = _root_cause(last)
            hint = (
                " (the database is read-only: the sweep's runs must write their curves; give a "
                "writable file or database)"
                if "readonly" in cause.replace(" ", "").lower()
                else ""
            )
            raise RuntimeError(
                f"could not open the curve store {redact_url(self.url)}{hint}: {redact_text(cause)}"
            ) from last
        self.study_id = study._study_id
        # runs left RUNNING by a killed worker (SIGKILL) on this host become FAIL
        fail_dead_trials(self.storage, self.study_id)
        stored = study.direction.name.lower()[:3]
        if stored != mode:
            raise ValueError(
                f"study {self.study_name!r} in {redact_url(self.url)} is to {stored}imise, "
                f"but mode={mode!r}."
            )

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "study_name": self.study_name, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["study_name"], state["mode"])  # type: ignore[misc]

    def start_run(self, hparams: Mapping[str, Any] | None = None) -> int:
        """Registers a new running run; returns its id."""
        trial_id = self.storage.create_new_trial(self.study_id)
        clean = {
            str(k): float(v)
            for k, v in (hparams or {}).items()
            if not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
        }
        self.storage.set_trial_user_attr(trial_id, "hparams", clean)
        mark_owner(self.storage, trial_id)
        return int(trial_id)

    def is_running(self, run_id: int) -> bool:
        """Whether run ``run_id`` exists and is still running (resume check)."""
        try:
            return self.storage.get_trial(run_id).state == TrialState.RUNNING
        except (KeyError, ValueError):
            return False

    def report(self, run_id: int, index: int, value: float, x: float | None = None) -> None:
        """Records the value of validation ``index`` (0-based) of a running run."""
        self.storage.set_trial_intermediate_value(run_id, int(index), float(value))
        if x is not None:
            self.storage.set_trial_system_attr(run_id, f"x:{int(index)}", float(x))

    def finish(self, run_id: int, result: float | None, state: str = "complete") -> None:
        """Marks a run ``complete``, ``stopped`` or ``failed``, with its result."""
        if state not in STATES:
            raise ValueError(f"`state` must be one of {list(STATES)}, got {state!r}.")
        if result is not None and math.isfinite(result):
            self.storage.set_trial_user_attr(run_id, "result", float(result))
        values = [float(result)] if state == "complete" and result is not None else None
        if state == "complete" and values is None:
            state = "failed"
        self.storage.set_trial_state_values(run_id, STATES[state], values)

    def runs(self, state: str | None = None) -> list[StoredRun]:
        """All runs of the study (or those in ``state``), in creation order."""
        wanted = None if state is None else ((STATES.get(state) or TrialState.RUNNING),)
        out = []
        for t in self.storage.get_all_trials(self.study_id, deepcopy=False, states=wanted):
            steps = sorted(t.intermediate_values)
            result = t.user_attrs.get("result")
            out.append(
                StoredRun(
                    run_id=int(t._trial_id),
                    number=int(t.number),
                    state=_state_name(t.state),
                    values=tuple(float(t.intermediate_values[s]) for s in steps),
                    hparams=dict(t.user_attrs.get("hparams") or {}),
                    result=None if result is None else float(result),
                )
            )
        return out

    def finished(self) -> list[FinishedRun]:
        """The runs that trained to their end, for the cross-run predictor."""
        return [r.as_finished() for r in self.runs("complete")]
