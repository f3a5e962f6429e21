"""Telling the study one job's result (both sweep modes): value, PRUNED or FAIL with a reason."""

from __future__ import annotations

import logging
import math

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from eecontrol.sweep.liveness import FAIL_REASON_ATTR
from eecontrol.sweep.trial import OBJECTIVE_ATTR, PRUNED_ATTR

log = logging.getLogger(__name__)


def tell_job(study: optuna.Study, trial_id: int, number: int, ret: JobReturn | None) -> str | None:
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

    Returns:
        None when the trial is finished without a fault, else why it failed (the text
        starts with ``lost:`` when the job's return was lost).
    """
    frozen = study._storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return None  # finished by the job or a recovery: never told twice
    value: float | None = None
    error: str | None = None
    if ret is not None and ret.status == JobStatus.COMPLETED:
        try:
            value = float(ret.return_value)
        except (TypeError, ValueError):
            error = f"the job returned {ret.return_value!r}, not a number"
    elif ret is not None:
        err = ret._return_value
        error = f"the job raised {type(err).__name__}: {err}"
    elif OBJECTIVE_ATTR in frozen.system_attrs:
        value = float(frozen.system_attrs[OBJECTIVE_ATTR])
    if PRUNED_ATTR in frozen.system_attrs:
        study.tell(number, state=TrialState.PRUNED)
        return None
    if value is not None and math.isfinite(value):
        try:
            study.tell(number, value)
        except RuntimeError as err:  # GridSampler's study.stop() outside optimize
            if "Study.stop" not in str(err):
                raise
        return None
    lost = ret is None
    if error is None:
        error = "its job was lost (killed, or its batch failed)" if lost else f"value {value}"
    study._storage.set_trial_system_attr(trial_id, FAIL_REASON_ATTR, error[:500])
    study.tell(number, state=TrialState.FAIL)
    log.warning("eecontrol_optuna: trial %d FAIL: %s", number, error[:300])
    return ("lost: " if lost else "") + error
