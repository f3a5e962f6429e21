"""Setup and end-of-fit checks of ConformalEarlyStopping that only warn or explain.

Each function returns a message (or None); the callback decides how to say it.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import Tensor

from eecontrol.core import conformal as core

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


def smallest_alpha(n: int) -> float:
    """The smallest level at which ``n`` calibration points give a finite quantile: 1/(n+1)."""
    return 1.0 / (n + 1)


def alpha_message(alpha: float, n: int, what: str) -> str | None:
    """Says when ``alpha`` is too small for ``n`` calibration points (None when it is not).

    With ``ceil((1 - alpha)(n + 1)) > n`` the conformal quantile is infinite: every
    interval is the whole line, every set holds every label, no outlier is ever flagged.
    """
    if n <= 0 or core.conformal_rank(n, alpha) <= n:
        return None
    return (
        f"alpha={alpha} is too small for {n} {what}: ceil((1 - alpha)(n + 1)) = "
        f"{core.conformal_rank(n, alpha)} > n, so every interval is the whole line, every "
        f"prediction set holds every label and no outlier is flagged. The smallest alpha that "
        f"{n} points support is 1/(n + 1) = {smallest_alpha(n):.4g}; use more hold-out points "
        "or a larger alpha."
    )


def class_counts_message(alpha: float, targets: Tensor, conditional: bool) -> str | None:
    """:func:`alpha_message` for classification: label-conditional sets use each class's points."""
    if not conditional:
        return alpha_message(alpha, int(targets.numel()), "hold-out points")
    counts = targets.long().bincount()
    present = counts[counts > 0]
    if present.numel() == 0:
        return None
    smallest = int(present.min())
    label = int((counts == smallest).nonzero()[0])
    return alpha_message(
        alpha, smallest, f"hold-out points of class {label} (label-conditional calibration)"
    )


def swapped_quantiles_message(out: Tensor, epoch: int, levels: Sequence[float]) -> str | None:
    """Warns when a quantile model's column 0 exceeds column 1 on most hold-out points."""
    if out.dim() != 2 or out.shape[1] != 2 or out.shape[0] == 0:
        return None
    share = float((out[:, 0] > out[:, 1]).double().mean())
    if share <= 0.5:
        return None
    return (
        f"the model's first output column exceeds its second on {share:.0%} of the hold-out "
        f"points (candidate of epoch {epoch}). CES reads the columns as (lower, upper) "
        f"quantiles at levels {list(levels)}; the model looks trained with them swapped "
        "(upper, lower), which gives wrong selection losses and intervals. Return (lower, upper)."
    )
