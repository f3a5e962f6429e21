"""The sweep's study: opened (created or loaded, its direction checked) and the trials a
sweep (or its rerun) queues first: the grid's missing points and the parameters of failed
trials that no trial finished."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from eecontrol.sweep.space import same_params
from eecontrol.sweep.worker import ENQUEUED_ATTR
from eecontrol.util.optuna_study import open_storage, redact

log = logging.getLogger(__name__)

RETRY_ATTR = "eecontrol:retry_of"


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters, or the ones it was enqueued with (waiting trials)."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params") or {})


def finished_count(study: optuna.Study) -> int:
    """The study's finished (``COMPLETE`` or ``PRUNED``) trials."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def enqueue_grid(study: optuna.Study, points: list[dict[str, Any]], names: list[str]) -> None:
    """Queues, in order, the grid points that have no finished or waiting trial."""
    have = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
    )
    for p in points:
        if not any(same_params(trial_params(t), p, names) for t in have):
            study.enqueue_trial(p)


def enqueue_failed(study: optuna.Study, names: list[str]) -> None:
    """On a rerun, asks again the parameters of failed trials that no trial finished."""
    trials = study.get_trials(deepcopy=False)
    done = [
        t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
    ]
    queued: list[dict[str, Any]] = []
    for t in trials:
        if t.state != TrialState.FAIL or not t.params:
            continue
        p = {k: t.params[k] for k in names if k in t.params}
        if len(p) != len(names) or any(same_params(trial_params(d), p, names) for d in done):
            continue
        if any(same_params(q, p, names) for q in queued):
            continue
        log.info("eecontrol_optuna: asking again the parameters of failed trial %d", t.number)
        study.enqueue_trial(p, user_attrs={RETRY_ATTR: t.number})
        queued.append(p)


def open_study(
    url: str,
    name: str,
    sampler: BaseSampler,
    pruner: BasePruner,
    direction: str | None,
    directions: list[str] | None,
) -> optuna.Study:
    """Creates the sweep's study, or loads it (a rerun), and checks its direction(s).

    Raises:
        ValueError: when a loaded study is set to other directions than the sweeper's.
    """
    study = optuna.create_study(
        storage=open_storage(url),
        study_name=name,
        sampler=sampler,
        pruner=pruner,
        direction=None if directions else direction,
        directions=directions,
        load_if_exists=True,
    )
    if directions is not None:
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise ValueError(
                f"study {name!r} in {redact(url)} is set to {stored}, but "
                f"hydra.sweeper.direction={directions}; use another study_name."
            )
    elif study._is_multi_objective() or study.direction != StudyDirection[str(direction).upper()]:
        raise ValueError(
            f"study {name!r} in {redact(url)} is set to "
            f"{[d.name.lower() for d in study.directions]}, but "
            f"hydra.sweeper.direction={direction}; use another study_name."
        )
    return study


def queue_grid(
    study: optuna.Study, points: list[dict[str, Any]], names: list[str], n_trials: int | None
) -> int:
    """Queues the grid's points (the first ``n_trials``) that no trial ran or waits for.

    Returns:
        The trials still to run: the points without a finished trial.
    """
    if n_trials is not None and n_trials < len(points):
        log.info("eecontrol_optuna: the first %d of %d grid points", n_trials, len(points))
        points = points[:n_trials]
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    budget = sum(not any(same_params(trial_params(t), p, names) for t in done) for p in points)
    enqueue_grid(study, points, names)
    return budget


def queue_trials(
    study: optuna.Study,
    names: list[str],
    n_trials: int | None,
    enqueue_trials: list[dict[str, Any]],
) -> int:
    """Queues failed trials' parameters (a rerun) and then ``enqueue_trials``.

    Returns:
        The trials still to run: ``n_trials`` less the finished ones.

    Raises:
        ValueError: for ``n_trials=None`` (only a grid has a size of its own).
    """
    if n_trials is None:
        raise ValueError("hydra.sweeper.n_trials=null needs the grid sampler; give a number.")
    budget = max(0, n_trials - finished_count(study))
    enqueue_failed(study, names)
    for p in enqueue_trials:  # known-good configurations first
        study.enqueue_trial(p, user_attrs={ENQUEUED_ATTR: True}, skip_if_exists=True)
    return budget
