"""What eecontrol callbacks read from the Trainer: plan length and step, stop sync, compile.

The plan's unit is the optimizer step (training batches under manual optimization), the
unit of ``trainer.estimated_stepping_batches``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from eecontrol.core.decision import lower_is_better

__all__ = [
    "AfterTrainBatch",
    "check_monitor_mode",
    "is_compiled",
    "log_every_n",
    "manual_optimization",
    "plan_step",
    "plan_unit",
    "planned_steps",
    "recompile_limit",
    "reduce_stop",
    "run_dir",
]


def reduce_stop(trainer: pl.Trainer, should_stop: bool) -> bool:
    """Makes a stop decision identical on all ranks and applies it to the trainer.

    A stop on any rank stops every rank (``all=False``), so one rank can never leave the
    others waiting in a collective.

    Args:
        trainer: the running trainer.
        should_stop: this rank's decision.

    Returns:
        The decision agreed by all ranks.
    """
    agreed = bool(trainer.strategy.reduce_boolean_decision(bool(should_stop), all=False))
    trainer.should_stop = trainer.should_stop or agreed
    return agreed


def manual_optimization(trainer: pl.Trainer) -> bool:
    """Whether the trainer's module steps its optimizers itself (``automatic_optimization=False``)."""
    module = trainer.lightning_module
    return module is not None and not module.automatic_optimization


def plan_step(trainer: pl.Trainer) -> int:
    """The run's progress in the unit of :func:`planned_steps` (and of
    ``trainer.estimated_stepping_batches``).

    Automatic optimization: optimizer steps done (``trainer.global_step``). Manual
    optimization: training batches done, since ``global_step`` there advances once per
    ``optimizer.step()`` call (twice per batch with two optimizers) while
    ``estimated_stepping_batches`` counts batches. Read in ``on_train_batch_start`` and
    ``on_before_optimizer_step``, it is the index of the current step of the plan.
    """
    if not manual_optimization(trainer):
        return int(trainer.global_step)
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)


def plan_unit(trainer: pl.Trainer) -> str:
    """What one step of :func:`plan_step` is, for messages."""
    if manual_optimization(trainer):
        return "training batches (manual optimization)"
    return "optimizer steps"


def is_compiled(module: Any) -> bool:
    """Whether ``module`` (or a submodule) runs through ``torch.compile``.

    Lightning unwraps ``trainer.fit(torch.compile(model))`` and keeps the compile settings
    in ``model._compiler_ctx``; ``nn.Module.compile()`` in place sets
    ``_compiled_call_impl``; a compiled submodule is an ``OptimizedModule``.
    """
    if module is None:
        return False
    if getattr(module, "_compiler_ctx", None):
        return True
    for sub in module.modules():
        if getattr(sub, "_compiled_call_impl", None) is not None:
            return True
        if type(sub).__name__ == "OptimizedModule":
            return True
    return False


def recompile_limit() -> int:
    """torch's limit of compiled versions per function (``recompile_limit``, formerly
    ``cache_size_limit``); past it the function runs eagerly, with only torch's warning."""
    import torch._dynamo

    config = torch._dynamo.config
    return int(getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 8)))


def log_every_n(trainer: pl.Trainer) -> int:
    """The loggers' cadence in steps (``trainer.log_every_n_steps``, at least 1)."""
    return max(int(getattr(trainer, "log_every_n_steps", 1) or 1), 1)


def planned_steps(trainer: pl.Trainer, owner: str) -> int:
    """The run's length in :func:`plan_step` units, from ``estimated_stepping_batches``.

    Under manual optimization with several optimizers and ``max_steps``, Lightning counts
    ``max_steps`` in ``optimizer.step()`` calls while the plan counts batches: the length is
    then ``ceil(max_steps / n_optimizers)`` batches (each batch steps each optimizer once),
    which is said in a warning since Lightning cannot know how often a batch steps.

    Args:
        trainer: the trainer, at ``on_fit_start`` or later.
        owner: the callback's name, for messages.

    Raises:
        ValueError: if the length is not finite.
    """
    total = trainer.estimated_stepping_batches
    n_opt = len(trainer.optimizers)
    if manual_optimization(trainer) and n_opt > 1 and trainer.max_steps not in (None, -1):
        by_steps = math.ceil(trainer.max_steps / n_opt)
        if by_steps < total:
            rank_zero_warn(
                f"{owner}: manual optimization with {n_opt} optimizers and max_steps="
                f"{trainer.max_steps}: Lightning counts max_steps in optimizer.step() calls, "
                f"this plan counts training batches; assuming every batch steps each optimizer "
                f"once, the run lasts {by_steps} batches (not {total})."
            )
            total = by_steps
    if not math.isfinite(total) or total < 1:
        raise ValueError(
            f"{owner} needs a finite training length: set `max_epochs` or `max_steps` on the "
            f"Trainer (estimated optimizer steps: {total})."
        )
    return int(total)


def run_dir(trainer: pl.Trainer) -> Path:
    """Returns the directory where a run's decisions and artefacts go.

    This is ``trainer.default_root_dir``: the Hydra run directory in ``eecontrol-train``
    (``trainer.default_root_dir: ${paths.output_dir}``) and stable across a resume, unlike
    a logger's versioned directory.
    """
    return Path(trainer.default_root_dir)


def check_monitor_mode(owner: str, monitor: str, mode: str) -> None:
    """Warns when ``mode`` contradicts what ``monitor``'s name says (max of a loss, min of an accuracy).

    Args:
        owner: the callback's name, for the message.
        monitor: the monitored metric's name.
        mode: ``"min"`` or ``"max"``.
    """
    lower = lower_is_better(monitor)
    if lower is True and mode == "max":
        rank_zero_warn(
            f"{owner}: mode='max' maximises `{monitor}`, whose name says it is a loss/error "
            f"(lower is better). Set mode='min' unless higher really is better."
        )
    elif lower is False and mode == "min":
        rank_zero_warn(
            f"{owner}: mode='min' minimises `{monitor}`, whose name says it is a score "
            f"(higher is better). Set mode='max' unless lower really is better."
        )


class AfterTrainBatch(Callback):
    """Lightning's ``on_train_batch_end`` without the arguments eecontrol never reads.

    Subclasses implement :meth:`after_train_batch` (the batch's outputs and data are not
    needed to count steps or record a loader's position).
    """

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.after_train_batch(trainer, pl_module, batch_idx)

    def after_train_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int
    ) -> None:
        """Called after every training batch (``batch_idx`` within the epoch)."""
