"""Early / late dropout and stochastic-depth schedules as functions of the optimizer step.

Liu, Xu, Darrell, et al., "Dropout Reduces Underfitting", ICML 2023. The rate at optimizer
step ``t`` of a run of ``total_steps`` steps with the cutoff at step ``cutoff_step`` is:

========  ========  =====================================================================
mode      schedule  rate(t)
========  ========  =====================================================================
standard  (any)     p
early     constant  p if t < cutoff_step else 0
early     linear    linspace(p, 0, cutoff_step)[t] if t < cutoff_step else 0
late      constant  0 if t < cutoff_step else p
late      linear    0 if t < cutoff_step else linspace(0, p, total - cutoff_step)[t - cutoff]
========  ========  =====================================================================

These equal the paper's reference schedule (one value per optimizer step, built from
``cutoff_epoch * iters_per_epoch``) for the same inputs; steps past ``total_steps`` keep the
last value. ``late`` + ``linear`` is our extension (the reference only has late constant):
dropout is off until the cutoff, then ramps linearly from 0 to ``p`` at the last step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MODES = ("standard", "early", "late")
SCHEDULES = ("constant", "linear")
CUTOFF_UNITS = ("fraction", "epochs", "steps")


def _linspace_at(start: float, stop: float, num: int, i: int) -> float:
    """Returns ``numpy.linspace(start, stop, num)[i]`` without building the array."""
    if num == 1:
        return start
    if i == num - 1:
        return stop
    step = (stop - start) / (num - 1)
    return start + i * step


def drop_rate(
    step: int,
    p: float,
    total_steps: int,
    cutoff_step: int,
    mode: str = "early",
    schedule: str = "constant",
) -> float:
    """Returns the drop rate at optimizer step ``step`` (0-based).

    Args:
        step: optimizer steps done so far (``trainer.global_step``).
        p: the drop rate while dropout is on, in [0, 1).
        total_steps: optimizer steps in the whole run (> 0).
        cutoff_step: the step where the phase changes, in [0, total_steps].
        mode: ``standard``, ``early`` or ``late``.
        schedule: ``constant`` or ``linear``.

    Returns:
        The rate, a float in [0, p].
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}, got {schedule!r}.")
    if total_steps < 1:
        raise ValueError(f"`total_steps` must be >= 1, got {total_steps!r}.")
    if not 0 <= cutoff_step <= total_steps:
        raise ValueError(f"`cutoff_step` must be in [0, {total_steps}], got {cutoff_step!r}.")
    if step < 0:
        raise ValueError(f"`step` must be >= 0, got {step!r}.")
    t = min(step, total_steps - 1)
    if mode == "standard":
        return p
    if mode == "early":
        if t >= cutoff_step:
            return 0.0
        return p if schedule == "constant" else _linspace_at(p, 0.0, cutoff_step, t)
    # late
    if t < cutoff_step:
        return 0.0
    return (
        p
        if schedule == "constant"
        else _linspace_at(0.0, p, total_steps - cutoff_step, t - cutoff_step)
    )


def cutoff_to_step(
    cutoff: float,
    unit: str,
    steps_per_epoch: int | None,
    total_steps: int,
    max_epochs: int | None,
) -> int:
    """Converts a cutoff in epochs, steps or as a fraction of training to an optimizer step.

    Args:
        cutoff: the cutoff value.
        unit: ``epochs`` (``cutoff * steps_per_epoch``, as the reference), ``fraction``
            (``cutoff * total_steps``, rounded) or ``steps`` (the optimizer step itself).
        steps_per_epoch: optimizer steps per epoch (needed with ``epochs`` only; None when
            epochs have no known length, e.g. an ``IterableDataset``).
        total_steps: optimizer steps in the run.
        max_epochs: the run's epochs, for the error message, or None.

    Returns:
        The cutoff step in [0, total_steps].

    Raises:
        ValueError: if the cutoff lies beyond training.
    """
    if unit not in CUTOFF_UNITS:
        raise ValueError(f"`cutoff_unit` must be one of {list(CUTOFF_UNITS)}, got {unit!r}.")
    if unit == "fraction":
        if not 0.0 <= cutoff <= 1.0:
            raise ValueError(
                f"`cutoff` must be in [0, 1] with cutoff_unit='fraction', got {cutoff!r}."
            )
        return round(cutoff * total_steps)
    if unit == "steps":
        if cutoff < 0 or cutoff != int(cutoff):
            raise ValueError(
                f"`cutoff` must be a whole number of optimizer steps >= 0 with "
                f"cutoff_unit='steps', got {cutoff!r}."
            )
        if cutoff > total_steps:
            raise ValueError(
                f"`cutoff={int(cutoff)}` optimizer steps lies beyond training ({total_steps} "
                f"optimizer steps); valid range with cutoff_unit='steps': [0, {total_steps}]."
            )
        return int(cutoff)
    if steps_per_epoch is None:
        raise ValueError(
            f"`cutoff={cutoff}` with cutoff_unit='epochs' needs epochs of known length, but the "
            "training data has no length (an IterableDataset: one epoch is the whole stream). "
            "Give the cutoff with cutoff_unit='steps' (optimizer steps) or 'fraction' (of "
            "trainer.estimated_stepping_batches)."
        )
    step = round(cutoff * steps_per_epoch)
    if step > total_steps:
        epochs = max_epochs if max_epochs is not None else total_steps / max(steps_per_epoch, 1)
        raise ValueError(
            f"`cutoff={cutoff}` epochs lies beyond training ({epochs} epochs, {total_steps} "
            f"optimizer steps); valid range with cutoff_unit='epochs': [0, {epochs}]."
        )
    return step


def depth_rates(p: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates ``linspace(0, p, depth)`` (first block never dropped).

    Computed as the paper's reference code and timm do,
    ``[x.item() for x in torch.linspace(0, p, depth)]`` (float32 values), so the rates
    are bit-identical to theirs.
    """
    if depth < 1:
        return []
    return [x.item() for x in torch.linspace(0, float(p), depth)]


@dataclass(frozen=True)
class DropSchedule:
    """A drop-rate schedule over a run's optimizer steps.

    Args:
        p: the drop rate while dropout is on.
        total_steps: optimizer steps in the run.
        cutoff_step: the optimizer step where the phase changes.
        mode: ``standard``, ``early`` or ``late``.
        schedule: ``constant`` or ``linear``.
    """

    p: float
    total_steps: int
    cutoff_step: int
    mode: str = "early"
    schedule: str = "constant"

    def __post_init__(self) -> None:
        drop_rate(0, self.p, self.total_steps, self.cutoff_step, self.mode, self.schedule)

    def rate(self, step: int) -> float:
        """The rate at optimizer step ``step``."""
        return drop_rate(step, self.p, self.total_steps, self.cutoff_step, self.mode, self.schedule)

    def phase(self, step: int) -> str:
        """``"on"`` where the rate is positive, else ``"off"``."""
        return "on" if self.rate(step) > 0.0 else "off"


def direction_variance(grads: Tensor) -> float:
    """Directional variance of mini-batch gradients (Liu et al. 2023, section 3).

    The mean over pairs of ``(1 - cos(g_i, g_j)) / 2``: 0 when all mini-batch gradients
    point the same way, 0.5 for orthogonal ones.

    Args:
        grads: (G, P) flattened gradients of G >= 2 mini-batches.

    Returns:
        The directional variance in [0, 1].
    """
    if grads.dim() != 2 or grads.shape[0] < 2:
        raise ValueError(f"`grads` must be (G >= 2, P), got {tuple(grads.shape)}.")
    unit = torch.nn.functional.normalize(grads.double(), dim=1)
    cos = unit @ unit.T
    g = grads.shape[0]
    off_diagonal = cos.sum() - cos.diagonal().sum()
    return float((1.0 - off_diagonal / (g * (g - 1))) / 2.0)


def direction_error(grads: Tensor, full: Tensor) -> float:
    """Mean ``(1 - cos(g_i, g_full)) / 2`` between mini-batch gradients and the full-data gradient.

    Args:
        grads: (G, P) flattened mini-batch gradients.
        full: (P,) the gradient over the whole training set.

    Returns:
        The direction error in [0, 1].
    """
    if grads.dim() != 2 or full.dim() != 1 or grads.shape[1] != full.shape[0]:
        raise ValueError(
            f"shapes must be grads (G, P) and full (P,), got {tuple(grads.shape)}, {tuple(full.shape)}."
        )
    cos = torch.nn.functional.cosine_similarity(grads.double(), full.double().unsqueeze(0), dim=1)
    return float(((1.0 - cos) / 2.0).mean())
