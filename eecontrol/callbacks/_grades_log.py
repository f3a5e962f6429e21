"""GradES's helpers around a reading: optimizers that own components, logs and warnings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import lightning.pytorch as pl
import torch

from eecontrol.core.grades import NO_GRADIENT, NOT_FINITE, Component

#: What a user should know about components that could not be read, by cause.
FAILURE_ADVICE = {
    NO_GRADIENT: "they are not used in the forward pass or are frozen by someone else; "
    "GradES never freezes them, so they keep the frozen fraction below "
    "max_frozen_ratio",
    NOT_FINITE: "their gradient holds NaN or inf at this step (with fp16 mixed "
    "precision, a step the GradScaler skips); no decision is made for them at such "
    "steps",
}


def lr_of(optimizers: Sequence[torch.optim.Optimizer], comp: Component) -> float | None:
    """The learning rate of the param group that holds ``comp`` (None: in no optimizer)."""
    first = comp.params[0]
    for opt in optimizers:
        for group in opt.param_groups:
            if any(p is first for p in group["params"]):
                return float(group["lr"])
    return None


def owners(
    optimizers: Sequence[torch.optim.Optimizer], components: Sequence[Component]
) -> dict[int, set[int]]:
    """Component indices per optimizer index (one held by none goes to the first)."""
    where = {
        id(p): k
        for k, opt in enumerate(optimizers)
        for group in opt.param_groups
        for p in group["params"]
    }
    out: dict[int, set[int]] = {k: set() for k in range(len(optimizers))}
    for i, comp in enumerate(components):
        out[where.get(id(comp.params[0]), 0)].add(i)
    return out


def log_metrics(trainer: pl.Trainer, metrics: Mapping[str, float]) -> None:
    """Sends ``metrics`` to every logger at the current ``global_step``."""
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=int(trainer.global_step))


def log_histogram(
    trainer: pl.Trainer, statistic: str, values: Sequence[float | None], step: int
) -> None:
    """Logs the spread of all components' latest statistic as a W&B histogram.

    The values span orders of magnitude across layers, so the histogram is of
    ``log10(statistic)`` (zero readings are left out); key
    ``grades/<statistic>/log10_histogram``. Only W&B loggers get it, on rank zero.
    """
    from lightning.pytorch.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    kept = [v for v in values if v is not None and v > 0]
    if not loggers or not kept or not trainer.is_global_zero:
        return
    import wandb

    hist = wandb.Histogram([math.log10(v) for v in kept])
    for logger in loggers:
        logger.log_metrics({f"grades/{statistic}/log10_histogram": hist}, step=step)
