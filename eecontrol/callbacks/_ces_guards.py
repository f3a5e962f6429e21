"""What ConformalEarlyStopping refuses at fit start: a training process that looks at the hold-out data.

CES keeps its guarantee only when no training decision (stopping, pruning, the learning
rate) depends on the hold-out set. These checks read the Trainer's callbacks and
schedulers, raise for what voids the guarantee, and warn (through the callback) about what
they cannot see.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.callbacks import Callback, EarlyStopping

from eecontrol.callbacks._control import ControlCallback

# Words that make a metric name a hold-out metric even after a training prefix.
HOLDOUT_WORDS = frozenset(
    {"val", "valid", "validation", "holdout", "heldout", "hold", "es", "escal", "cal"}
    | {"calib", "calibration", "test", "dev", "eval", "evaluation"}
)
_SEPARATORS = "/_-.: |"
# Callbacks known not to stop training or change the learning rate from hold-out data
# (exact classes: a subclass may override anything and is checked like any other).
KNOWN_TRAINING_ONLY = frozenset(
    {
        "ModelCheckpoint",
        "LearningRateMonitor",
        "TQDMProgressBar",
        "RichProgressBar",
        "ModelSummary",
        "RichModelSummary",
        "DeviceStatsMonitor",
        "Timer",
        "GradientAccumulationScheduler",
        "StochasticWeightAveraging",
        "GradES",
        "DARTSPlusStopping",  # decides from the architecture weights, trained on training data
        "DropoutSchedule",
        "GradientDiagnostics",
        "ResumableCheckpoint",
        "EpochSeed",
        "ControlRichProgressBar",
        "ControlTQDMProgressBar",
        "_OptimizedMetricCheck",
    }
)


def lightning_class(cb: object) -> bool:
    """Whether ``cb`` is exactly one of Lightning's or eecontrol's known training-only classes."""
    name = type(cb).__name__
    if name not in KNOWN_TRAINING_ONLY:
        return False
    module = type(cb).__module__
    return module.startswith(("lightning.pytorch.", "pytorch_lightning.", "eecontrol."))


def is_train_metric(name: str | None, prefixes: Sequence[str]) -> bool:
    """Whether ``name`` is a training-only metric (see ``train_metric_prefixes`` of the callback)."""
    if not name:
        return False
    name = str(name)
    words = [w for w in re.split(r"[/_\-.:| ]+", name.lower()) if w]
    if any(w in HOLDOUT_WORDS for w in words):
        return False
    for prefix in prefixes:
        if not prefix or not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if not rest or prefix[-1] in _SEPARATORS or rest[0] in _SEPARATORS:
            return True
    return False


def check_trainer(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    ces: Callback,
    ces_class: type[Callback],
    prefixes: Sequence[str],
    warn_once: Callable[[str, str], None],
) -> dict[str, str]:
    """Refuses a training process that looks at the hold-out data; warns about what it cannot see.

    Args:
        trainer: the Trainer at fit start.
        pl_module: the module being fitted.
        ces: the ConformalEarlyStopping callback doing the check.
        ces_class: its class: other instances of it are known training-only.
        prefixes: the callback's ``train_metric_prefixes``.
        warn_once: ``warn_once(key, message)``, the callback's once-per-key warning.

    Returns:
        What was checked: a label per callback or scheduler and the verdict.

    Raises:
        ValueError: a stopping, pruning or plateau decision on a hold-out metric, a
            non-integer length, or no fixed length.
    """
    why = (
        "CES needs a training process that never looks at the hold-out data: stopping, "
        "pruning or LR decisions on hold-out metrics make the stored candidates depend on "
        "it and void the conformal guarantee. CES itself does the early stopping (per test "
        "point, after fit). Remove it, or make it monitor a training metric "
        f"(prefixes {list(prefixes)})."
    )
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    for name, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(
                f"ConformalEarlyStopping: `{name}` must be an integer (the fixed training "
                f"length; -1 or None for unlimited), got {value!r}."
            )
    checked: dict[str, str] = {}
    for cb in trainer.callbacks:
        if cb is ces:
            continue
        label = type(cb).__name__
        monitor = getattr(cb, "monitor", None)
        stops = isinstance(cb, EarlyStopping) or "prun" in label.lower()
        stops = stops or (isinstance(cb, ControlCallback) and monitor is not None)
        if stops:
            if not is_train_metric(monitor, prefixes):
                raise ValueError(
                    f"ConformalEarlyStopping: {label}(monitor={monitor!r}) is in the Trainer. {why}"
                )
            checked[f"{label}(monitor={monitor})"] = "training metric"
        elif (
            lightning_class(cb)
            or isinstance(cb, ces_class)
            or getattr(cb, "training_only", False)  # declared by the callback (EpochSeed)
        ):
            checked[label] = "known training-only"
        elif isinstance(cb, pl_callbacks.ModelCheckpoint):
            checked[label] = "checkpointing (restoring its best model is not CES)"
        else:
            where = "" if monitor is None else f" (monitor={monitor!r})"
            checked[label] = "unknown: warned"
            warn_once(
                f"cb:{label}",
                f"cannot tell whether callback {label}{where} stops training or changes the "
                "learning rate from hold-out metrics. If it does, the conformal guarantee is "
                "void; if it only uses training signals, ignore this warning.",
            )
    for config in trainer.lr_scheduler_configs:
        sched = type(config.scheduler).__name__
        if config.reduce_on_plateau:
            if not is_train_metric(config.monitor, prefixes):
                raise ValueError(
                    f"ConformalEarlyStopping: ReduceLROnPlateau(monitor={config.monitor!r}) "
                    f"is configured. {why}"
                )
            checked[f"{sched}(monitor={config.monitor})"] = "training metric"
        else:
            checked[sched] = "fixed schedule"
    configured = {id(c.scheduler) for c in trainer.lr_scheduler_configs}
    for attr, value in vars(pl_module).items():
        values = list(value.values()) if isinstance(value, Mapping) else value
        values = values if isinstance(values, list | tuple) else [values]
        for v in values:
            if (
                isinstance(v, torch.optim.lr_scheduler.ReduceLROnPlateau)
                and id(v) not in configured
            ):
                checked[f"{type(pl_module).__name__}.{attr}"] = "hand-stepped plateau: warned"
                warn_once(
                    f"plateau:{attr}",
                    f"the module holds a ReduceLROnPlateau (`{attr}`) that is not configured "
                    "in Lightning, so it is stepped by hand and its metric cannot be "
                    "checked. Stepping it on a hold-out metric voids the conformal "
                    "guarantee; return it from configure_optimizers with a training "
                    "`monitor` instead.",
                )
    if not math.isfinite(trainer.estimated_stepping_batches):
        raise ValueError(
            "ConformalEarlyStopping: the number of epochs must be fixed in advance (set "
            "`max_epochs` or `max_steps`); CES trains to the end and selects afterwards."
        )
    return checked


def check_module(pl_module: pl.LightningModule, task: str, quantiles: tuple[float, float]) -> None:
    """Refuses quantile levels that differ from the module's ``quantiles`` attribute."""
    if task != "quantile":
        return
    levels = getattr(pl_module, "quantiles", None)
    if levels is not None and tuple(float(v) for v in levels) != quantiles:
        raise ValueError(
            f"ConformalEarlyStopping: `quantiles` {list(quantiles)} differs from the "
            f"module's quantiles {list(levels)}; the selection loss must be the one the "
            "network is trained for."
        )


def check_prefixes(prefixes: object) -> tuple[str, ...]:
    """Validates ``train_metric_prefixes`` (a list of strings, not one string)."""
    if isinstance(prefixes, str) or not isinstance(prefixes, Sequence):
        raise ValueError(f"`train_metric_prefixes` must be a list of prefixes, got {prefixes!r}.")
    return tuple(str(p) for p in prefixes)
