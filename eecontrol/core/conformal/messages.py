"""What CES can only explain, not refuse: levels too small for the data, swapped quantiles.

Each function returns a message (or None); the caller decides how to say it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from eecontrol.core.conformal._common import conformal_rank


def smallest_alpha(n: int) -> float:
    """The smallest level at which ``n`` calibration points give a finite quantile: 1/(n+1)."""
    return 1.0 / (n + 1)


def alpha_message(alpha: float, n: int, what: str) -> str | None:
    """Says when ``alpha`` is too small for ``n`` calibration points (None when it is not).

    With ``ceil((1 - alpha)(n + 1)) > n`` the conformal quantile is infinite: every
    interval is the whole line, every set holds every label, no outlier is ever flagged.
    """
    if n <= 0 or conformal_rank(n, alpha) <= n:
        return None
    return (
        f"alpha={alpha} is too small for {n} {what}: ceil((1 - alpha)(n + 1)) = "
        f"{conformal_rank(n, alpha)} > n, so every interval is the whole line, every "
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
