"""Telling the study one job's result (both sweep modes): value, PRUNED or FAIL with a reason."""

from __future__ import annotations

import logging
import math

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import ListConfig
from optuna.trial import FrozenTrial, TrialState

from eecontrol.util.liveness import FAIL_REASON_ATTR, OWNER_ATTR, fail_dead_trials, owner_alive
from eecontrol.util.optuna_study import METRICS_ATTR, OBJECTIVE_ATTR, PRUNED_ATTR

log = logging.getLogger(__name__)


def _values(
    study: optuna.Study, frozen: FrozenTrial, ret: JobReturn | None, objectives: list[str] | None
) -> tuple[list[float] | None, str | None]:
    """The trial's objective values (one per direction), or why there are none."""
    n = len(study.directions)
    if ret is not None and ret.status != JobStatus.COMPLETED:
        err = ret._return_value
        return None, f"the job raised {type(err).__name__}: {err}"
    if objectives:  # multi-objective from the metrics the job stored
        metrics = dict(frozen.system_attrs.get(METRICS_ATTR) or {})
        missing = [o for o in objectives if o not in metrics]
        if missing:
            return None, (
                f"the job stored no metric {missing} of hydra.sweeper.objectives "
                f"(stored: {sorted(metrics)})"
            )
        return [float(metrics[o]) for o in objectives], None
    if ret is None:
        if OBJECTIVE_ATTR in frozen.system_attrs and n == 1:
            return [float(frozen.system_attrs[OBJECTIVE_ATTR])], None
        return None, None
    value = ret.return_value
    raw = list(value) if isinstance(value, list | tuple | ListConfig) else [value]
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        return None, f"the job returned {value!r}, not a number"
    if len(values) != n:
        return None, f"the job returned {len(values)} value(s) for a study of {n} objective(s)"
    return values, None


def tell_job(
    study: optuna.Study,
    trial_id: int,
    number: int,
    ret: JobReturn | None,
    objectives: list[str] | None = None,
) -> str | None:
    """Tells the study the result of the job of trial ``number`` (storage id ``trial_id``).

    A trial the job (or a recovery) already finished is never told twice. A pruned job
    (``eecontrol:pruned_at`` on the trial) is ``PRUNED``; a finite return value (or, when the
    launcher lost the return, the objective the job stored) is ``COMPLETE``; anything else
    is ``FAIL`` with its reason in ``eecontrol:fail_reason``.

    Args:
        study: the study.
        trial_id: the trial's storage id.
        number: the trial's number.
        ret: the job's return, or None when the launcher lost it.
        objectives: a multi-objective study's metrics, read from the trial's stored
            metrics (``eecontrol:metrics``); None: from the job's return value.

    Returns:
        None when the trial is finished without a fault, else why it failed (the text
        starts with ``lost:`` when the job's return was lost).
    """
    frozen = study._storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return None  # finished by the job or a recovery: never told twice
    if PRUNED_ATTR in frozen.system_attrs:
        study.tell(number, state=TrialState.PRUNED)
        return None
    values, error = _values(study, frozen, ret, objectives)
    if values is not None and all(math.isfinite(v) for v in values):
        try:
            study.tell(number, values if len(values) > 1 else values[0])
        except RuntimeError as err:  # GridSampler's study.stop() outside optimize
            if "Study.stop" not in str(err):
                raise
        return None
    lost = ret is None
    if error is None:
        error = "its job was lost (killed, or its batch failed)" if lost else f"values {values}"
    study._storage.set_trial_system_attr(trial_id, FAIL_REASON_ATTR, error[:500])
    study.tell(number, state=TrialState.FAIL)
    log.warning("eecontrol_optuna: trial %d FAIL: %s", number, error[:300])
    return ("lost: " if lost else "") + error


def recover_trials(study: optuna.Study) -> None:
    """Fails trials left running by dead processes (a killed earlier sweep or its jobs).

    A dead owner's trial that recorded its result (pruned, or its objective) is told that
    result; the others are failed; trials of live owners or other hosts are left alone.
    """
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(OWNER_ATTR)
        if owner and owner_alive(str(owner)) is False:
            # its job ended after recording its result, but no sweeper told it
            if PRUNED_ATTR in t.system_attrs:
                study.tell(t.number, state=TrialState.PRUNED)
            elif OBJECTIVE_ATTR in t.system_attrs:
                study.tell(t.number, float(t.system_attrs[OBJECTIVE_ATTR]))
    failed = fail_dead_trials(storage, study._study_id)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in failed:
            continue
        owner = t.system_attrs.get(OWNER_ATTR)
        log.warning(
            "eecontrol_optuna: trial %d is still RUNNING (owner %s); left alone",
            t.number,
            owner or "unknown",
        )
