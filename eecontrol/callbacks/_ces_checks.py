"""Setup and end-of-fit checks of ConformalEarlyStopping that only warn or explain.

Each function returns a message (or None); the callback decides how to say it. The
Lightning-free messages (levels too small, swapped quantiles) live in
:mod:`eecontrol.core.conformal.messages`.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping

from eecontrol.core.conformal.messages import (  # re-exported: the callback says them
    alpha_message,
    class_counts_message,
    smallest_alpha,
    swapped_quantiles_message,
)

# eecontrol callbacks that may stop training (on training-only signals, else CES refuses them)
_STOPPERS = frozenset({"GradES", "LearningCurveStopping", "DARTSPlusStopping"})


def can_stop(cb: Callback) -> bool:
    """Whether ``cb`` is a callback known to stop training (EarlyStopping, pruning, eecontrol's)."""
    name = type(cb).__name__
    return isinstance(cb, EarlyStopping) or "prun" in name.lower() or name in _STOPPERS


def late_stoppers(trainer: pl.Trainer, ces: Callback) -> list[str]:
    """Stopping callbacks listed after ``ces``: their epoch-end stop comes after CES's hook."""
    callbacks = list(trainer.callbacks)
    if ces not in callbacks:
        return []
    after = callbacks[callbacks.index(ces) + 1 :]
    return [type(cb).__name__ for cb in after if can_stop(cb)]


def order_message(trainer: pl.Trainer, ces: Callback) -> str | None:
    """Names stopping callbacks listed after ``ces`` (None when there are none)."""
    late = late_stoppers(trainer, ces)
    if not late:
        return None
    return (
        f"{', '.join(late)} is listed after ConformalEarlyStopping in the Trainer's callbacks, "
        "so a stop it makes at an epoch end happens after CES's hook of that epoch: CES cannot "
        "report it when it happens (it says so at the end of fit). List stopping callbacks "
        "before ConformalEarlyStopping."
    )


def refuse_fsdp_bypass(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Refuses ``ces_outputs`` under FSDP: that hook would run on the shards, past the wrapper.

    Raises:
        ValueError: naming FSDP and what to do instead.
    """
    if fsdp_model(trainer) is not None and callable(getattr(pl_module, "ces_outputs", None)):
        raise ValueError(
            "ConformalEarlyStopping: under FSDP the hold-out pass goes through the FSDP "
            "wrapper's forward (the module's own weights are shards), but "
            f"{type(pl_module).__name__} defines `ces_outputs`, which would bypass it. Return "
            "the outputs CES needs from forward() instead, or train with DDP."
        )


def fsdp_model(trainer: pl.Trainer) -> object | None:
    """The FSDP-wrapped model when the strategy is FSDP, else None."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    model = getattr(trainer.strategy, "model", None)
    return model if isinstance(model, FullyShardedDataParallel) else None


__all__ = [
    "alpha_message",
    "can_stop",
    "class_counts_message",
    "few_candidates_message",
    "fsdp_model",
    "late_stoppers",
    "lr_message",
    "order_message",
    "refuse_fsdp_bypass",
    "smallest_alpha",
    "stopped_message",
    "swapped_quantiles_message",
]


def stopped_message(trainer: pl.Trainer, ces: Callback, when: str) -> str:
    """Says that training was stopped ``when``, by which callbacks (CES never stops)."""
    stoppers = [
        type(cb).__name__
        for cb in trainer.callbacks
        if cb is not ces and getattr(cb, "stopped_epoch", None) not in (None, 0)
    ]
    return (
        f"training was stopped {when} "
        f"(by {', '.join(stoppers) if stoppers else 'trainer.should_stop set by hand'}). "
        "CES keeps the candidates stored so far; if the stop depended on hold-out metrics, "
        "the conformal guarantee is void."
    )


def lr_message(before: list[float], now: list[float], epoch: int) -> str:
    """Says that the learning rate changed without a scheduler Lightning knows of."""
    return (
        f"the learning rate changed from {before} to {now} before epoch "
        f"{epoch} without a scheduler configured in Lightning (a "
        "hand-stepped scheduler?). If the change depends on hold-out metrics, the "
        "conformal guarantee is void."
    )


def few_candidates_message(stored: int, planned: int | None) -> str:
    """Says that fewer than two candidates were stored: nothing to select between."""
    return (
        f"only {stored} candidate(s) stored (the plan: {planned}); CES "
        "selects among candidates and has nothing to select between"
        + ("" if stored else ", and no ConformalPredictor can be built")
        + ". Lower storage_period or storage_start, or train longer."
    )
