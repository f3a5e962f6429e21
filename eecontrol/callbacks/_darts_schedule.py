"""When DARTSPlusStopping checks its criteria, and whether it can ever stop.

A DARTS search counted in epochs checks at epoch ends (the paper). One counted in
optimizer steps (``max_steps``, a stream with one epoch) must check at validations or
every N steps, or it checks once and never stops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl

from eecontrol.callbacks._ces_plan import run_epochs

CHECK_UNITS = ("epochs", "validations", "steps")


def check_ops(learnable_ops: Sequence[str] | None, none_op: str, skip_op: str) -> None:
    """Validates the op-name options of DARTSPlusStopping.

    Raises:
        ValueError: naming the option and what is valid.
    """
    if isinstance(learnable_ops, str):
        raise ValueError(
            f"`learnable_ops` must be a list of op names, got the string {learnable_ops!r}."
        )
    if learnable_ops is not None and len(list(learnable_ops)) == 0:
        raise ValueError(
            "`learnable_ops` must be None (the ops named sep_conv*, dil_conv*, conv*) or a "
            "non-empty list of op names, e.g. ['sep_conv_3x3', 'dil_conv_3x3']; got []: "
            "criterion 2 would rank no op and hold trivially after `patience` checks."
        )
    for name, value in (("none_op", none_op), ("skip_op", skip_op)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"`{name}` must be a non-empty op name, got {value!r}.")
    if none_op == skip_op:
        raise ValueError(
            f"`none_op` and `skip_op` must be different op names, got {none_op!r} for both: "
            "the none op is never chosen in a genotype, so criterion 1 could never count it."
        )


def has_validation(trainer: pl.Trainer) -> bool:
    """Whether this fit has a validation loader (from a datamodule, the module or fit's args)."""
    loop = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None)
    source = getattr(loop, "_data_source", None)
    return bool(source is not None and source.is_defined())


def planned_checks(cb: Any, trainer: pl.Trainer) -> int | None:
    """How many checks the run will make, or None when that is not known in advance."""
    if cb.check_unit == "epochs":
        epochs = run_epochs(trainer)
        return None if epochs is None else epochs // cb.check_period
    if cb.check_unit == "steps":
        manual = not trainer.lightning_module.automatic_optimization
        total = trainer.estimated_stepping_batches
        if manual or not math.isfinite(total) or total <= 0:
            return None  # global_step may advance by several steps per batch
        return int(total) // cb.check_period
    return None


def never_stops_message(cb: Any, trainer: pl.Trainer, checks: int | None) -> str | None:
    """Says when the search can never stop (too few checks, or a stream checked per epoch)."""
    stream = not math.isfinite(trainer.num_training_batches)
    if cb.check_unit == "epochs" and stream and checks is None:
        return (
            "the training data is a stream of unknown length and the criteria are checked at "
            "epoch ends only: a stream read once (max_steps) is one epoch, a single check, and "
            "the search can never stop. Use check_unit='validations' or 'steps'."
        )
    if checks is None:
        return None
    unguarded = checks * (cb.check_period if cb.check_unit == "epochs" else 1) >= cb.min_epochs
    skip_ok = unguarded and checks >= 1
    stable_ok = unguarded and checks >= cb.patience + 1
    can = {
        "skip": skip_ok,
        "stable": stable_ok,
        "either": skip_ok or stable_ok,
        "both": skip_ok and stable_ok,
    }[cb.criterion]
    if can:
        return None
    return (
        f"the run makes {checks} check(s) (check_unit={cb.check_unit!r}, "
        f"check_period={cb.check_period}); criterion={cb.criterion!r} with "
        f"min_epochs={cb.min_epochs} and patience={cb.patience} needs at least "
        f"{max(cb.min_epochs, 1 if cb.criterion in ('skip', 'either') else cb.patience + 1)} "
        "checks, so "
        "the search can never stop. Lower patience or min_epochs, check more often, or train "
        "longer."
    )
