"""When ConformalEarlyStopping stores candidates: the storage plan, fixed before training.

A candidate is stored at the end of every ``period``-th unit past a warm-up of ``start``
units. The unit is the epoch (the paper's schedule) or the optimizer step
(``trainer.global_step``), which step-based runs need: ``Trainer(max_steps=N)`` on a stream
has a single epoch, however many validations it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl

from eecontrol.core.checks import check_range

UNITS = ("epochs", "steps")


def run_epochs(trainer: pl.Trainer) -> int | None:
    """How many epoch ends the run reaches, or None when that is unknown.

    ``max_epochs``, or fewer when ``max_steps`` ends the run first (Lightning ends the
    epoch at ``max_steps``, so a partial last epoch has an epoch end too). Unknown for a
    training set of unknown length (a stream) with ``max_steps``, or with no limit. Under
    manual optimization with several optimizer steps per batch this is an upper bound.
    Call it after ``trainer.estimated_stepping_batches`` (which loads the training data).
    """
    max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None
    if max_steps is None:
        return max_epochs
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        return None
    per_epoch = math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))
    epochs = math.ceil(max_steps / per_epoch)
    return epochs if max_epochs is None else min(epochs, max_epochs)


def run_length(trainer: pl.Trainer, unit: str) -> int | None:
    """The run's length in ``unit``: epoch ends (:func:`run_epochs`) or optimizer steps."""
    if unit == "epochs":
        return run_epochs(trainer)
    total = trainer.estimated_stepping_batches
    return int(total) if math.isfinite(total) and total > 0 else None


@dataclass(frozen=True)
class StoragePlan:
    """Which units end with a stored candidate.

    Args:
        unit: ``epochs`` or ``steps``.
        period: units between candidates, >= 1.
        start: the resolved warm-up in units: candidates are the units ``u > start`` with
            ``u % period == 0`` (``u`` counts completed units, from 1).
        total: the run's length in units, or None when unknown.
    """

    unit: str
    period: int
    start: int
    total: int | None

    @property
    def candidates(self) -> int | None:
        """How many candidates the plan stores in a run of ``total`` units (None: unknown)."""
        if self.total is None:
            return None
        return max(self.total // self.period - self.start // self.period, 0)

    def due(self, done: int, seen: int | None = None) -> bool:
        """Whether a candidate is due after ``done`` completed units.

        Without ``seen``: exactly when ``done`` is a planned unit. With ``seen`` (the count
        at the previous check), when a planned unit lies in ``(seen, done]``: under manual
        optimization with two optimizers ``global_step`` advances by two per batch and may
        jump over a planned step.
        """
        if done <= self.start:
            return False
        if seen is None:
            return done % self.period == 0
        last_planned = done // self.period * self.period
        return last_planned > max(seen, self.start)

    def describe(self) -> str:
        """The plan in words, for the ``plan`` decision."""
        unit = "epoch(s)" if self.unit == "epochs" else "optimizer step(s)"
        warmup = f" after a warm-up of {self.start} {unit}" if self.start else ""
        return f"storing a candidate every {self.period} {unit}{warmup}"


def resolve_start(start: int | float, total: int | None, unit: str) -> int:
    """The warm-up in units: an int as is, a float a fraction of ``total`` (rounded down).

    Raises:
        ValueError: for a fraction when the run's length in ``unit`` is unknown.
    """
    if not isinstance(start, float):
        return int(start)
    if total is None:
        of = "max_epochs" if unit == "epochs" else "the run's optimizer steps"
        raise ValueError(
            f"ConformalEarlyStopping: `storage_start`={start} is a fraction of {of}, but the "
            "run's length is not known in advance (-1: unlimited, or a stream of unknown "
            f"length); give an integer number of {unit} (>= 0) or set "
            + ("max_epochs." if unit == "epochs" else "max_steps.")
        )
    return math.floor(start * total)


def empty_plan_message(plan: StoragePlan, option: object) -> str:
    """The error for a plan that stores no candidate, with the valid values."""
    assert plan.total is not None
    last = plan.total // plan.period * plan.period
    valid = (
        f"`storage_start` must be in [0, {last - 1}] {plan.unit}"
        if last
        else f"`storage_period` must be in [1, {plan.total}]"
    )
    return (
        f"ConformalEarlyStopping: `storage_start`={option} ({plan.start} {plan.unit}) with "
        f"`storage_period`={plan.period} stores no candidate in a run of {plan.total} "
        f"{plan.unit}; {valid}"
    )


def length_note(plan: StoragePlan, max_steps: int | None) -> str:
    """Says that ``max_steps`` shortened an epoch plan (empty otherwise)."""
    if plan.unit == "epochs" and max_steps not in (None, -1):
        return f" (max_steps={max_steps} ends the run after that many epoch ends)"
    return ""


def plan_messages(
    plan: StoragePlan,
    option: object,
    resumed_start: int | None,
    max_steps: int | None,
    resumed: bool,
) -> list[tuple[str, str]]:
    """The warnings a plan deserves at fit start, as ``(key, message)`` pairs.

    Raises:
        ValueError: for a plan that stores no candidate (a fresh run only).
    """
    out: list[tuple[str, str]] = []
    unit, total = plan.unit, plan.total
    note = length_note(plan, max_steps)
    if resumed_start is not None and resumed_start != plan.start:
        out.append(
            (
                "start",
                f"the checkpoint's candidates followed a warm-up of {resumed_start} "
                f"{unit[:-1]}(s); `storage_start`={option} now gives {plan.start} (run length "
                f"{total} {unit}). The schedule changes mid-run; the guarantee needs one fixed "
                "before training (keep max_epochs, max_steps and storage_start of the original "
                "run).",
            )
        )
    planned = plan.candidates
    if planned == 0 and not resumed:
        raise ValueError(empty_plan_message(plan, option) + note + ".")
    if planned is None:
        out.append(
            (
                "unknown",
                "the run's length in epochs is not known in advance (a training stream of "
                "unknown length with max_steps): candidates are stored at epoch ends only, so "
                "a stream read once stores a single candidate and CES has nothing to select "
                "between. Use storage_unit='steps' with storage_period=<optimizer steps>.",
            )
        )
    elif planned < 2:
        out.append(
            (
                "few",
                f"the plan ({plan.describe()} in a run of {total} {unit}{note}) stores "
                f"{planned} candidate(s): CES selects among candidates and has nothing to "
                "select between. Lower storage_period or storage_start"
                + (", or use storage_unit='steps'." if unit == "epochs" else "."),
            )
        )
    return out


def check_storage_start(start: object, unit: str) -> None:
    """Validates ``storage_start``: an integer >= 0 (units) or a fraction in [0, 1)."""
    if isinstance(start, float):
        if not 0.0 <= start < 1.0:  # also NaN
            of = "max_epochs" if unit == "epochs" else "estimated_stepping_batches"
            raise ValueError(
                f"`storage_start` must be an integer number of {unit} in [0, inf) "
                f"or a fraction of {of} in [0.0, 1.0), got {start!r}."
            )
    else:
        check_range("storage_start", start, low=0, integer=True)


def plan_evidence(plan: StoragePlan, n: int, task: str, checked: dict[str, str]) -> dict[str, Any]:
    """The evidence of the ``plan`` decision: the plan, the hold-out size, what was checked."""
    return {
        "holdout_points": n,
        "planned_candidates": plan.candidates,
        "storage_unit": plan.unit,
        "run_length": plan.total,
        "task": task,
        "callbacks_checked": "; ".join(f"{k}: {v}" for k, v in checked.items()) or "none",
        "callbacks_warned": sum(v.endswith("warned") for v in checked.values()),
    }
