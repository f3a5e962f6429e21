"""``ConformalEarlyStopping``: store candidates during fit; ``ConformalPredictor``: infer after.

Liang, Zhou, Sesia, "Conformal inference is (almost) free for neural networks trained
with early stopping" (ICML 2023). The callback stores a candidate model every
``storage_period`` epochs (a weights-only checkpoint in the run directory) with its
per-sample outputs on the whole hold-out set (the validation split, in a fixed order).
Training runs the fixed number of epochs; the early-stopped model is chosen per test point
(and label) afterwards by :class:`ConformalPredictor`, which keeps the conformal guarantee
although the same hold-out data served selection and calibration.

The module protocol (all optional):

- ``ces_inputs(batch)`` / ``ces_targets(batch)``: the inputs and targets of a hold-out
  batch. By default a tuple/list batch is ``(x, y, ...)`` and a dict batch gives its
  targets under ``labels``, ``label``, ``y``, ``target`` or ``targets`` and its inputs under
  ``x``, ``input`` or ``inputs`` (else the dict without the target key).
- ``ces_outputs(inputs)``: the per-sample outputs. Required for ``task="outlier"``
  (per-sample loss = score, larger = more outlying). Otherwise ``module(inputs)`` (or
  ``module(**inputs)`` for a dict) must return: logits (m, K) for ``classification``
  (softmax is applied; an object with ``.logits`` works too), one prediction per sample
  (m,) or (m, 1) for ``regression``, and the lower and upper quantiles (m, 2) for
  ``quantile``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
)
from typing_extensions import override

from eecontrol.callbacks import _ces_checks as checks
from eecontrol.callbacks._ces_plan import UNITS, StoragePlan, plan_messages, resolve_start
from eecontrol.callbacks._ces_plan import run_length as _run_length
from eecontrol.callbacks._control import ControlCallback, check_choice, check_range, run_dir
from eecontrol.core import conformal as core

TASKS = ("classification", "regression", "quantile", "outlier")
METHODS = ("ces", "naive", "naive_theory", "data_splitting", "full")
HOLDOUT_FILE = "holdout.pt"
TARGET_KEYS = ("labels", "label", "y", "target", "targets")
INPUT_KEYS = ("x", "input", "inputs")
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


def _lightning_class(cb: object) -> bool:
    """Whether ``cb`` is exactly one of Lightning's or eecontrol's known training-only classes."""
    name = type(cb).__name__
    if name not in KNOWN_TRAINING_ONLY:
        return False
    module = type(cb).__module__
    return module.startswith(("lightning.pytorch.", "pytorch_lightning.", "eecontrol."))


class CandidateOutputs(nn.Module):
    """Wraps a model so that ``forward(inputs)`` returns the per-sample outputs CES needs.

    Args:
        model: the trained module (a LightningModule or any ``nn.Module``).
        task: ``classification``, ``regression``, ``quantile`` or ``outlier``.
    """

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, inputs: Any) -> Tensor:
        custom = getattr(self.model, "ces_outputs", None)
        if callable(custom):
            return custom(inputs)
        if self.task == "outlier":
            raise ValueError(
                f"{type(self.model).__name__} must define `ces_outputs(inputs)` returning "
                "per-sample outlier scores (larger = more outlying) for task='outlier'."
            )
        out = self.model(**inputs) if isinstance(inputs, Mapping) else self.model(inputs)
        out = getattr(out, "logits", out)
        if not isinstance(out, Tensor):
            raise ValueError(
                f"{type(self.model).__name__}(inputs) returned {type(out).__name__}; CES needs "
                "a tensor (or an object with `.logits`), or define `ces_outputs(inputs)`."
            )
        if self.task == "classification":
            if out.dim() != 2 or out.shape[1] < 2:
                raise ValueError(
                    f"task='classification' needs logits (m, K) with K >= 2 classes; the model "
                    f"returned {tuple(out.shape)}."
                )
            return torch.softmax(out, dim=-1)
        if self.task == "regression":
            if out.dim() > 2 or (out.dim() == 2 and out.shape[1] != 1):
                raise ValueError(
                    f"task='regression' needs one prediction per sample, (m,) or (m, 1); the "
                    f"model returned {tuple(out.shape)}. For two quantiles use task='quantile'."
                )
            return out.reshape(-1)
        if out.dim() != 2 or out.shape[1] != 2:
            raise ValueError(
                f"task='quantile' needs the lower and upper quantiles, shape (m, 2); the model "
                f"returned {tuple(out.shape)}."
            )
        return out


def default_inputs(batch: Any) -> Any:
    """The inputs of a batch: ``batch[0]`` of a tuple/list; for a dict see the module docs."""
    if isinstance(batch, list | tuple):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in INPUT_KEYS:
            if key in batch:
                return batch[key]
        return {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    return batch


def default_targets(batch: Any) -> Tensor | None:
    """The targets of a batch: ``batch[1]`` of a tuple/list, or a dict's target key."""
    if isinstance(batch, list | tuple):
        return batch[1] if len(batch) > 1 else None
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch:
                return batch[key]
    return None


def _split(module: nn.Module, batch: Any) -> tuple[Any, Tensor | None]:
    inputs_hook = getattr(module, "ces_inputs", None)
    targets_hook = getattr(module, "ces_targets", None)
    inputs = inputs_hook(batch) if callable(inputs_hook) else default_inputs(batch)
    targets = targets_hook(batch) if callable(targets_hook) else default_targets(batch)
    return inputs, targets


_NO_TARGETS = (
    "ConformalEarlyStopping: no targets in the hold-out batches; give (x, y) tuples, a dict "
    "with a `labels`/`y`/`target` key, or define `ces_targets(batch)` on the module."
)


def _batch_len(targets: Tensor | None, out: Tensor) -> int:
    """The number of points in a batch: its targets' first dimension, else the outputs'."""
    if targets is None:
        return int(out.shape[0])
    return int(torch.as_tensor(targets).shape[0])


def _candidate_path(path: str, base: Path | None) -> Path:
    """A stored candidate's file: relative names are resolved against the candidates dir."""
    p = Path(path)
    if p.is_absolute() or base is None:
        return p
    return base / p


class ConformalEarlyStopping(ControlCallback):
    """Stores CES candidates (checkpoint + hold-out outputs) every ``storage_period`` epochs or steps.

    The guarantee needs a training process that does not look at the hold-out data: this
    callback refuses, at fit start, a Trainer that also has EarlyStopping, a pruning
    callback, a monitoring eecontrol callback or ReduceLROnPlateau driven by a non-training
    metric, or no fixed length; it warns, naming them, about what it cannot see: callbacks
    of unknown behaviour, a ReduceLROnPlateau held by the module but not given to
    Lightning, the learning rate changing without a configured scheduler, and training
    that stops before ``max_epochs``. The ``plan`` decision lists every callback checked.

    The hold-out set is the validation dataloader's dataset (from a datamodule, the
    module's ``val_dataloader`` or ``trainer.fit(model, train_loader, val_loader)``),
    iterated by this callback in index order, whole: the loader's shuffling, ``drop_last``
    and batch size do not change it. A ``SubsetRandomSampler`` defines the subset (sorted);
    any other custom sampler is refused, because its points cannot be known in advance.

    Example::

        ces = ConformalEarlyStopping(task="classification", storage_period=1)
        trainer = L.Trainer(max_epochs=50, callbacks=[ces])
        trainer.fit(model, train_loader, val_loader)
        sets = ces.predictor(model).predict_set(x_test, alpha=0.1)

    Args:
        task: ``classification``, ``regression``, ``quantile`` (CQR) or ``outlier``.
        storage_period: units (``storage_unit``) between stored candidates (the paper's
            tau), >= 1.
        storage_start: a warm-up before the first candidate, fixed in advance like the
            schedule: an int is units (>= 0), a float a fraction of the run's length in
            [0, 1) (rounded down, as Lightning's ``limit_*_batches``): of the epochs the run
            reaches (``max_epochs``, fewer when ``max_steps`` ends it first), or of
            ``trainer.estimated_stepping_batches`` for steps. Candidates are the units
            ``u > start`` with ``u % storage_period == 0`` (``u`` counts completed units
            from 1). Underfit early candidates widen CES sets without being the best model;
            0 is the paper's schedule. Must leave at least one candidate in the run.
        alpha: the level used for the summary decision at the end of fit, in (0, 1).
        holdout_batch_size: batch size of the hold-out pass (does not change results).
        candidates_dir: where candidates go (default ``<run dir>/ces``); the stored paths are
            relative to it, so a moved run directory still loads.
        conditional: label-conditional (the paper's main version) or marginal sets.
        aps_seed: seed of the APS randomisation drawn once per hold-out point.
        randomized: use randomised APS scores (classification).
        train_metric_prefixes: metric-name prefixes that count as training-only signals,
            which other callbacks may stop or schedule on. A name counts only if the prefix
            ends at a separator (``train/loss``, ``train_loss``; not ``trainval_loss``) and
            no later word names held-out data (``train_holdout_loss`` does not count).
        quantiles: the (low, high) levels of ``task="quantile"`` (the selection losses);
            a module attribute ``quantiles`` must agree.
        storage_unit: ``epochs`` (default, the paper: stored at epoch ends) or ``steps``
            (optimizer steps, ``trainer.global_step``: stored after the optimizer step that
            completes a period). Use ``steps`` for runs counted in steps, e.g.
            ``Trainer(max_steps=N)`` on a stream (an ``IterableDataset``), which has one epoch.
    """

    def __init__(
        self,
        task: str = "classification",
        storage_period: int = 1,
        storage_start: int | float = 0,
        alpha: float = 0.1,
        holdout_batch_size: int = 512,
        candidates_dir: str | None = None,
        conditional: bool = True,
        aps_seed: int = 0,
        randomized: bool = True,
        train_metric_prefixes: Sequence[str] = ("train",),
        quantiles: Sequence[float] = (0.05, 0.95),
        storage_unit: str = "epochs",
    ) -> None:
        super().__init__()
        self.task = check_choice("task", task, TASKS)
        self.storage_unit = check_choice("storage_unit", storage_unit, UNITS)
        check_range("storage_period", storage_period, low=1, integer=True)
        if isinstance(storage_start, float):
            if not 0.0 <= storage_start < 1.0:  # also NaN
                of = "max_epochs" if storage_unit == "epochs" else "estimated_stepping_batches"
                raise ValueError(
                    f"`storage_start` must be an integer number of {storage_unit} in [0, inf) "
                    f"or a fraction of {of} in [0.0, 1.0), got {storage_start!r}."
                )
        else:
            check_range("storage_start", storage_start, low=0, integer=True)
        check_range("alpha", alpha, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_range("holdout_batch_size", holdout_batch_size, low=1, integer=True)
        check_range("aps_seed", aps_seed, low=0, integer=True)
        if isinstance(train_metric_prefixes, str) or not isinstance(
            train_metric_prefixes, Sequence
        ):
            raise ValueError(
                "`train_metric_prefixes` must be a list of prefixes, got "
                f"{train_metric_prefixes!r}."
            )
        if candidates_dir is not None and not isinstance(candidates_dir, str | Path):
            raise ValueError(
                f"`candidates_dir` must be a directory path or None, got {candidates_dir!r}."
            )
        self.quantiles = core.check_quantile_levels(
            list(quantiles) if isinstance(quantiles, Sequence) else quantiles
        )
        self.storage_period = int(storage_period)
        self.storage_start: int | float = (
            storage_start if isinstance(storage_start, float) else int(storage_start)
        )
        self._start = 0 if isinstance(storage_start, float) else int(storage_start)
        self._resumed_start: int | None = None  # the checkpoint's warm-up, in storage units
        self._plan: StoragePlan | None = None
        self._seen_step = -1  # global_step at the last step-unit check
        self.alpha = float(alpha)
        self.holdout_batch_size = int(holdout_batch_size)
        self.candidates_dir = None if candidates_dir is None else str(candidates_dir)
        self.conditional = bool(conditional)
        self.aps_seed = int(aps_seed)
        self.randomized = bool(randomized)
        self.train_metric_prefixes = tuple(str(p) for p in train_metric_prefixes)
        # progress
        self.epochs: list[int] = []
        self.steps: list[int] = []
        self.paths: list[str] = []  # relative to the candidates directory
        self.outputs: list[Tensor] = []
        self.targets: Tensor | None = None
        self.checked: dict[str, str] = {}
        self._dir: Path | None = None
        self._holdout: Dataset | None = None
        self._collate: Any = None
        self._lrs: list[float] | None = None
        self._warned: set[str] = set()

    @override
    def _config(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "storage_period": self.storage_period,
            "storage_start": self.storage_start,
            "storage_unit": self.storage_unit,
            "alpha": self.alpha,
            "conditional": self.conditional,
            "aps_seed": self.aps_seed,
            "randomized": self.randomized,
            "quantiles": list(self.quantiles),
        }

    @override
    def _identity(self) -> dict[str, Any]:
        return {"task": self.task}

    # --- guards ---------------------------------------------------------------------

    def _is_train_metric(self, name: str | None) -> bool:
        """Whether ``name`` is a training-only metric (see ``train_metric_prefixes``)."""
        if not name:
            return False
        name = str(name)
        words = [w for w in re.split(r"[/_\-.:| ]+", name.lower()) if w]
        if any(w in HOLDOUT_WORDS for w in words):
            return False
        for prefix in self.train_metric_prefixes:
            if not prefix or not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if not rest or prefix[-1] in _SEPARATORS or rest[0] in _SEPARATORS:
                return True
        return False

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"ConformalEarlyStopping: {message}", category=UserWarning)

    def _check_trainer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        why = (
            "CES needs a training process that never looks at the hold-out data: stopping, "
            "pruning or LR decisions on hold-out metrics make the stored candidates depend on "
            "it and void the conformal guarantee. CES itself does the early stopping (per test "
            "point, after fit). Remove it, or make it monitor a training metric "
            f"(prefixes {list(self.train_metric_prefixes)})."
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
            if cb is self:
                continue
            label = type(cb).__name__
            monitor = getattr(cb, "monitor", None)
            stops = isinstance(cb, EarlyStopping) or "prun" in label.lower()
            stops = stops or (isinstance(cb, ControlCallback) and monitor is not None)
            if stops:
                if not self._is_train_metric(monitor):
                    raise ValueError(
                        f"ConformalEarlyStopping: {label}(monitor={monitor!r}) is in the "
                        f"Trainer. {why}"
                    )
                checked[f"{label}(monitor={monitor})"] = "training metric"
            elif (
                _lightning_class(cb)
                or isinstance(cb, ConformalEarlyStopping)
                or getattr(cb, "training_only", False)  # declared by the callback (EpochSeed)
            ):
                checked[label] = "known training-only"
            elif isinstance(cb, pl_callbacks.ModelCheckpoint):
                checked[label] = "checkpointing (restoring its best model is not CES)"
            else:
                where = "" if monitor is None else f" (monitor={monitor!r})"
                checked[label] = "unknown: warned"
                self._warn_once(
                    f"cb:{label}",
                    f"cannot tell whether callback {label}{where} stops training or changes the "
                    "learning rate from hold-out metrics. If it does, the conformal guarantee is "
                    "void; if it only uses training signals, ignore this warning.",
                )
        for config in trainer.lr_scheduler_configs:
            sched = type(config.scheduler).__name__
            if config.reduce_on_plateau:
                if not self._is_train_metric(config.monitor):
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
                    self._warn_once(
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
        self.checked = checked

    def _check_module(self, pl_module: pl.LightningModule) -> None:
        if self.task != "quantile":
            return
        levels = getattr(pl_module, "quantiles", None)
        if levels is not None and tuple(float(v) for v in levels) != self.quantiles:
            raise ValueError(
                f"ConformalEarlyStopping: `quantiles` {list(self.quantiles)} differs from the "
                f"module's quantiles {list(levels)}; the selection loss must be the one the "
                "network is trained for."
            )

    # --- hold-out set ---------------------------------------------------------------

    def _val_loader(self, trainer: pl.Trainer) -> Any:
        """The validation loader, before or after Lightning has requested it."""
        loader = trainer.val_dataloaders
        if loader is None:
            dm = trainer.datamodule
            if dm is not None and hasattr(dm, "val_dataloader"):
                loader = dm.val_dataloader()
            else:  # plain `fit(model, train_loader, val_loader)` or the module's hook
                source = getattr(
                    getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None),
                    "_data_source",
                    None,
                )
                if source is not None and source.is_defined():
                    loader = source.dataloader()
        if isinstance(loader, list | tuple):
            if len(loader) != 1:
                raise ValueError(
                    "ConformalEarlyStopping needs exactly one hold-out (validation) "
                    f"dataloader, got {len(loader)}."
                )
            loader = loader[0]
        if loader is None or not hasattr(loader, "dataset"):
            raise ValueError(
                "ConformalEarlyStopping needs a hold-out set: give the Trainer a validation "
                "dataloader (`trainer.fit(model, train_loader, val_loader)`, a datamodule or "
                "the module's `val_dataloader`); it serves selection and calibration."
            )
        return loader

    def _resolve_holdout(self, trainer: pl.Trainer) -> None:
        """The whole hold-out set in a fixed (index) order, whatever the loader's sampling."""
        loader = self._val_loader(trainer)
        dataset = loader.dataset
        if isinstance(dataset, IterableDataset):
            raise ValueError(
                "ConformalEarlyStopping: the hold-out dataset is an IterableDataset; CES needs "
                "a map-style dataset (indexable, with a length) so every candidate sees the "
                "same points in the same order."
            )
        batch_sampler = getattr(loader, "batch_sampler", None)
        sampler = getattr(loader, "sampler", None)
        if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
            raise ValueError(
                f"ConformalEarlyStopping: the validation loader uses a custom batch sampler "
                f"({type(batch_sampler).__name__}); CES cannot know which points it covers. "
                "Give a loader over exactly the hold-out dataset."
            )
        if isinstance(sampler, SubsetRandomSampler):
            dataset = Subset(dataset, sorted(int(i) for i in sampler.indices))
        elif isinstance(sampler, RandomSampler) and (
            sampler.replacement or sampler.num_samples != len(dataset)
        ):
            raise ValueError(
                "ConformalEarlyStopping: the validation loader samples with replacement or a "
                "different number of points; CES needs each hold-out point exactly once."
            )
        elif sampler is not None and type(sampler) not in (SequentialSampler, RandomSampler):
            name = type(sampler).__name__
            if name != "DistributedSampler":
                raise ValueError(
                    f"ConformalEarlyStopping: the validation loader uses a custom sampler "
                    f"({name}); CES cannot know which points it covers. Give a loader over "
                    "exactly the hold-out dataset."
                )
        self._holdout = dataset
        self._collate = getattr(loader, "collate_fn", None)

    def _loader(self, batch_size: int) -> DataLoader:
        """The whole hold-out set in dataset order."""
        assert self._holdout is not None
        return DataLoader(
            self._holdout,
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            **({"collate_fn": self._collate} if self._collate is not None else {}),
        )

    @torch.no_grad()
    def _forward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Any) -> Tensor:
        """Per-sample outputs of one batch in eval mode, through the FSDP wrapper if any.

        Under FSDP the module's own parameters are shards: a direct call would see them, so
        the call goes through ``trainer.strategy.model``, which gathers them (every rank
        runs the same batches, as FSDP's collectives need).
        """
        model = checks.fsdp_model(trainer) or pl_module
        wrapper = CandidateOutputs(model, self.task)  # type: ignore[arg-type]
        was_training = model.training  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        try:
            out = wrapper(move_data_to_device(inputs, pl_module.device))
        finally:
            model.train(was_training)  # type: ignore[attr-defined]
        return out.detach().to("cpu", torch.float64)

    def _holdout_outputs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[Tensor, Tensor | None]:
        """Per-sample outputs on the whole hold-out set, in dataset order (every rank)."""
        if self._holdout is None:
            self._resolve_holdout(trainer)
        outs, targets = [], []
        for batch in self._loader(self.holdout_batch_size):
            inputs, y = _split(pl_module, batch)
            outs.append(self._forward(trainer, pl_module, inputs))
            if y is not None:
                targets.append(torch.as_tensor(y).detach().cpu())
        out = torch.cat(outs)
        if not torch.isfinite(out).all():
            raise ValueError(
                f"ConformalEarlyStopping: the model's hold-out outputs at epoch "
                f"{trainer.current_epoch} (step {trainer.global_step}) contain NaN or inf; the "
                "candidate cannot be stored. Check the training loss."
            )
        return out, (torch.cat(targets) if targets else None)

    def _copy_from_checkpoint_run(self, trainer: pl.Trainer, missing: list[str]) -> list[str]:
        """Copies the candidates of a run resumed into a new run directory from the old one.

        ``ckpt_path=<old run>/checkpoints/last.ckpt`` with a new run directory: the stored
        (relative) candidates live in ``<old run>/ces``; they are copied, so the new run
        directory holds every candidate it selects from. Returns the paths still missing.
        """
        ckpt = getattr(trainer, "ckpt_path", None)
        if not ckpt or "://" in str(ckpt):
            return missing
        source = Path(ckpt).resolve().parent.parent / "ces"
        if source == self._dir.resolve() or not all(
            _candidate_path(p, source).is_file() for p in missing
        ):
            return missing
        if trainer.is_global_zero:
            for p in missing:
                target = _candidate_path(p, self._dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(_candidate_path(p, source), target)
            rank_zero_info(
                f"ConformalEarlyStopping: copied {len(missing)} candidate(s) of the resumed run "
                f"from {source} into {self._dir}."
            )
        trainer.strategy.barrier("ces_copy_candidates")
        return [p for p in missing if not _candidate_path(p, self._dir).exists()]

    # --- hooks ----------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._check_trainer(trainer, pl_module)
        self._check_module(pl_module)
        self._dir = Path(self.candidates_dir) if self.candidates_dir else run_dir(trainer) / "ces"
        if self._dir.exists() and not self._dir.is_dir():
            raise ValueError(
                f"ConformalEarlyStopping: `candidates_dir` {str(self._dir)!r} is an existing "
                "file; it must be a directory (or not exist yet)."
            )
        missing = [p for p in self.paths if not _candidate_path(p, self._dir).exists()]
        if missing and not self.candidates_dir:
            missing = self._copy_from_checkpoint_run(trainer, missing)
        if missing:
            raise ValueError(
                f"ConformalEarlyStopping: {len(missing)} stored candidate checkpoints of the "
                f"resumed run are missing (first: {_candidate_path(missing[0], self._dir)}); "
                "without them the CES selection is incomplete. Restore them or start a new run."
            )
        self._resolve_holdout(trainer)
        assert self._holdout is not None
        n = len(self._holdout)  # type: ignore[arg-type]
        if self.outputs and self.outputs[0].shape[0] != n:
            raise ValueError(
                f"ConformalEarlyStopping: the checkpoint's candidates were stored on a hold-out "
                f"set of {self.outputs[0].shape[0]} points, but the hold-out set now has {n}; "
                "resume with the same data split."
            )
        self._plan_storage(trainer, n)
        self._check_setup(trainer, pl_module, n)

    def _plan_storage(self, trainer: pl.Trainer, n: int) -> None:
        """Fixes the storage plan for this fit and records it (again when it changed)."""
        unit = self.storage_unit
        total = _run_length(trainer, unit)
        self._start = resolve_start(self.storage_start, total, unit)
        self._plan = plan = StoragePlan(unit, self.storage_period, self._start, total)
        self._seen_step = int(trainer.global_step)
        for key, message in plan_messages(
            plan, self.storage_start, self._resumed_start, trainer.max_steps, bool(self.outputs)
        ):
            self._warn_once(key, message)
        planned = plan.candidates
        evidence = {
            "holdout_points": n,
            "planned_candidates": planned,
            "storage_unit": unit,
            "run_length": total,
            "task": self.task,
            "callbacks_checked": "; ".join(f"{k}: {v}" for k, v in self.checked.items()) or "none",
            "callbacks_warned": sum(v.endswith("warned") for v in self.checked.values()),
        }
        last = next((d for d in reversed(self._decisions) if d.action == "plan"), None)
        if last is None or any(  # run_length: absent in plans recorded before steps
            k in last.evidence and last.evidence[k] != evidence[k]
            for k in ("planned_candidates", "run_length")
        ):
            self._decide(
                trainer,
                "plan",
                f"{plan.describe()} with its outputs on all {n} hold-out points; training is "
                "not stopped early" + ("" if last is None else " (the plan of a new fit)"),
                evidence,
            )

    def _check_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, n: int) -> None:
        """What can be known before training: outputs' shape, targets, alpha, callback order."""
        checks.refuse_fsdp_bypass(trainer, pl_module)
        inputs, targets = _split(pl_module, self._first_batch())
        out = self._forward(trainer, pl_module, inputs)  # raises for a wrong output shape
        if out.shape[0] != _batch_len(targets, out):
            raise ValueError(
                f"ConformalEarlyStopping: the model returned {out.shape[0]} outputs for a "
                f"hold-out batch of {_batch_len(targets, out)} points; CES needs one per sample."
            )
        if self.task != "outlier" and targets is None:
            raise ValueError(_NO_TARGETS)
        message = checks.alpha_message(self.alpha, n, "hold-out points")
        if message:
            self._warn_once("alpha", message)
        message = checks.order_message(trainer, self)
        if message:
            self._warn_once("order", message)

    def _first_batch(self) -> Any:
        assert self._holdout is not None
        return next(iter(self._loader(batch_size=min(2, len(self._holdout)))))  # type: ignore[arg-type]

    def _learning_rates(self, trainer: pl.Trainer) -> list[float]:
        return [float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups if "lr" in g]

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lrs = self._learning_rates(trainer)
        if self._lrs is not None and lrs != self._lrs and not trainer.lr_scheduler_configs:
            self._warn_once(
                "lr",
                f"the learning rate changed from {self._lrs} to {lrs} before epoch "
                f"{trainer.current_epoch} without a scheduler configured in Lightning (a "
                "hand-stepped scheduler?). If the change depends on hold-out metrics, the "
                "conformal guarantee is void.",
            )
        self._lrs = lrs

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.storage_unit != "steps" or self._plan is None:
            return
        step = int(trainer.global_step)
        if step <= self._seen_step:  # accumulating micro-batches: no optimizer step yet
            return
        due = self._plan.due(step, self._seen_step)
        self._seen_step = step
        if due and step not in self.steps:
            self._store(trainer, pl_module, f"candidate_step{step:08d}.pt")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        self._check_early_stop(trainer)
        if self.storage_unit != "epochs" or self._plan is None:
            return
        if not self._plan.due(epoch + 1) or epoch in self.epochs:
            return
        self._store(trainer, pl_module, f"candidate_epoch{epoch:04d}.pt")

    def _store(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        """Stores the current model as a candidate: its weights and its hold-out outputs."""
        epoch, step = int(trainer.current_epoch), int(trainer.global_step)
        out, targets = self._holdout_outputs(trainer, pl_module)
        if self.task != "outlier":
            if targets is None:
                raise ValueError(_NO_TARGETS)
            if self.targets is None:
                self.targets = targets
                if self.task == "classification":
                    message = checks.class_counts_message(self.alpha, targets, self.conditional)
                    if message:
                        self._warn_once("alpha", message)
        assert self._dir is not None
        # every rank: under FSDP gathering the full state dict is a collective
        full = trainer.strategy.lightning_module_state_dict()
        if trainer.is_global_zero:
            self._dir.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu() for k, v in full.items()}
            torch.save({"state_dict": state, "epoch": epoch, "step": step}, self._dir / name)
        self.epochs.append(epoch)
        self.steps.append(step)
        self.paths.append(name)
        self.outputs.append(out)
        for key, value in (
            ("ces/holdout_loss", self._holdout_loss(len(self.outputs) - 1)),
            ("ces/candidates", float(len(self.epochs))),
        ):
            if self.storage_unit == "epochs":
                pl_module.log(key, value, on_epoch=True)
            else:
                pl_module.log(key, value, on_step=True, on_epoch=False)

    def _check_early_stop(self, trainer: pl.Trainer) -> None:
        """Warns when something stops training before ``max_epochs`` (CES never does)."""
        max_epochs = trainer.max_epochs
        if not trainer.should_stop or max_epochs in (None, -1):
            return
        if trainer.current_epoch + 1 >= max_epochs:  # type: ignore[operator]
            return
        self._warn_stopped(trainer, f"at epoch {trainer.current_epoch} of {max_epochs}")

    def _warn_stopped(self, trainer: pl.Trainer, when: str) -> None:
        stoppers = [
            type(cb).__name__
            for cb in trainer.callbacks
            if cb is not self and getattr(cb, "stopped_epoch", None) not in (None, 0)
        ]
        self._warn_once(
            "stop",
            f"training was stopped {when} "
            f"(by {', '.join(stoppers) if stoppers else 'trainer.should_stop set by hand'}). "
            "CES keeps the candidates stored so far; if the stop depended on hold-out metrics, "
            "the conformal guarantee is void.",
        )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Whatever the callbacks' order: did the run end before its planned length?
        plan = self._plan
        if plan is None or plan.total is None or not trainer.should_stop:
            return
        done = trainer.current_epoch if plan.unit == "epochs" else trainer.global_step
        if done < plan.total:
            self._warn_stopped(trainer, f"at {plan.unit[:-1]} {done} of {plan.total}")

    def _holdout_loss(self, index: int) -> float:
        out = self.outputs[index]
        if self.task == "classification":
            assert self.targets is not None
            p = out.gather(1, self.targets.long().view(-1, 1)).clamp_min(
                torch.finfo(torch.float64).tiny
            )
            return float(-torch.log(p).sum())
        if self.task == "regression":
            assert self.targets is not None
            return float(((out - self.targets.to(torch.float64)) ** 2).sum())
        if self.task == "quantile":
            assert self.targets is not None
            y = self.targets.to(torch.float64)
            lo, hi = self.quantiles
            return float(
                core.pinball_loss(out[:, 0], y, lo).sum()
                + core.pinball_loss(out[:, 1], y, hi).sum()
            )
        return float(out.sum())

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(self.epochs) < 2:
            planned = None if self._plan is None else self._plan.candidates
            self._warn_once(
                "stored",
                f"only {len(self.epochs)} candidate(s) stored (the plan: {planned}); CES "
                "selects among candidates and has nothing to select between"
                + ("" if self.epochs else ", and no ConformalPredictor can be built")
                + ". Lower storage_period or storage_start, or train longer.",
            )
        if not self.epochs:
            return
        if self.task == "quantile":
            message = checks.swapped_quantiles_message(
                self.outputs[-1], self.epochs[-1], self.quantiles
            )
            if message:
                self._warn_once("swapped", message)
        losses = [self._holdout_loss(i) for i in range(len(self.epochs))]
        best = min(range(len(losses)), key=losses.__getitem__)
        if trainer.is_global_zero and self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            record = self.record()
            record.pop("root", None)  # a moved run directory must still load
            torch.save(record, self._dir / HOLDOUT_FILE)
            (self._dir / "candidates.json").write_text(
                json.dumps(
                    [
                        {"epoch": e, "step": s, "path": p, "holdout_loss": loss}
                        for e, s, p, loss in zip(self.epochs, self.steps, self.paths, losses)
                    ],
                    indent=1,
                )
            )
        last = next((d for d in reversed(self._decisions) if d.action == "candidates"), None)
        if last is None or last.evidence.get("candidates") != len(self.epochs):
            where = (
                f"epoch {self.epochs[best]}"
                if self.storage_unit == "epochs"
                else f"step {self.steps[best]} (epoch {self.epochs[best]})"
            )
            self._decide(
                trainer,
                "candidates",
                f"{len(self.epochs)} candidates stored; the naive early-stopping choice would be "
                f"{where}, CES selects per test point at prediction time",
                {
                    "candidates": len(self.epochs),
                    "naive_best_epoch": self.epochs[best],
                    "naive_best_step": self.steps[best],
                    "naive_best_holdout_loss": losses[best],
                    "last_holdout_loss": losses[-1],
                },
            )

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Summarise CES against the naive baseline on the labelled test split, if any.
        if (
            not self.outputs
            or trainer.datamodule is None
            or not hasattr(trainer.datamodule, "test_dataloader")
        ):
            return
        loader = trainer.datamodule.test_dataloader()
        batch = next(
            iter(
                DataLoader(
                    loader.dataset,
                    batch_size=len(loader.dataset),
                    **({"collate_fn": loader.collate_fn} if loader.collate_fn else {}),
                )
            )
        )
        x, y = _split(pl_module, batch)
        if y is None:
            return
        evidence = self.evaluate(pl_module, move_data_to_device(x, pl_module.device), y, self.alpha)
        self._decide(
            trainer,
            "evaluate",
            f"test split ({len(loader.dataset)} points) at alpha={self.alpha}: CES vs the naive "
            "early-stopped model calibrated on the same hold-out data",
            evidence,
        )

    def evaluate(self, model: nn.Module, x: Any, y: Tensor, alpha: float) -> dict[str, float]:
        """Coverage and size (or type-I error and power) of CES and the naive baseline.

        Args:
            model: a module with the candidates' architecture.
            x: test inputs.
            y: labels (classification), outcomes (regression, quantile) or outlier flags.
            alpha: the level.

        Returns:
            ``{method}_coverage`` and ``{method}_size`` (sets), ``{method}_width``
            (intervals), or ``{method}_type1`` and ``{method}_power`` (outliers).
        """
        out: dict[str, float] = {}
        predictors = {m: self.predictor(model, method=m) for m in ("ces", "naive")}
        test = predictors["ces"].candidate_outputs(x)
        y = torch.as_tensor(y).cpu()
        for name, pred in predictors.items():
            if self.task == "classification":
                sets = core.prediction_sets(pred.p_values_from_outputs(test), alpha)
                out[f"{name}_coverage"] = float(
                    sets[torch.arange(len(y)), y.long()].double().mean()
                )
                out[f"{name}_size"] = float(sets.sum(1).double().mean())
            elif self.task in ("regression", "quantile"):
                iv = pred.intervals_from_outputs(test, alpha)
                yy = y.to(torch.float64)
                out[f"{name}_coverage"] = float(
                    ((iv.lower <= yy) & (yy <= iv.upper)).double().mean()
                )
                out[f"{name}_width"] = float(iv.width().mean())
            else:
                rejected = pred.p_values_from_outputs(test) <= alpha
                inlier = y == 0
                out[f"{name}_type1"] = (
                    float(rejected[inlier].double().mean()) if inlier.any() else math.nan
                )
                out[f"{name}_power"] = (
                    float(rejected[~inlier].double().mean()) if (~inlier).any() else math.nan
                )
        return out

    @override
    def progress_fields(self) -> dict[str, str]:
        return {"ces": f"{len(self.epochs)} cand"}

    @override
    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["ConformalEarlyStopping/candidates"] = len(self.epochs)
        for d in self._decisions:
            if d.action in ("candidates", "evaluate"):
                out.update({f"ConformalEarlyStopping/{k}": v for k, v in d.evidence.items()})
        return out

    # --- results --------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """Everything a :class:`ConformalPredictor` needs besides the model (weights_only-safe).

        ``paths`` are relative to the candidates directory (``root``, dropped in the
        ``holdout.pt`` file, which lives there).
        """
        if not self.outputs:
            raise ValueError("ConformalEarlyStopping has stored no candidate yet.")
        return {
            "task": self.task,
            "epochs": list(self.epochs),
            "steps": list(self.steps),
            "paths": list(self.paths),
            "root": None if self._dir is None else str(self._dir.resolve()),
            "outputs": torch.stack(self.outputs),
            "targets": self.targets,
            "aps_seed": self.aps_seed,
            "randomized": self.randomized,
            "conditional": self.conditional,
            "quantiles": list(self.quantiles),
        }

    def predictor(self, model: nn.Module, method: str = "ces") -> ConformalPredictor:
        """A predictor over this run's candidates, using ``model`` as the architecture."""
        return ConformalPredictor(model, self.record(), method=method)

    @override
    def _progress_state(self) -> dict[str, Any]:
        return {
            "epochs": list(self.epochs),
            "steps": list(self.steps),
            "paths": list(self.paths),
            "outputs": torch.stack(self.outputs) if self.outputs else None,
            "targets": self.targets,
            "start": self._start,
        }

    @override
    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self.epochs = list(state.get("epochs", []))
        self.steps = list(state.get("steps", []))
        self.paths = list(state.get("paths", []))
        outputs = state.get("outputs")
        self.outputs = list(outputs.unbind(0)) if outputs is not None else []
        self.targets = state.get("targets")
        # the resolved warm-up in storage units ("start_epoch" in older checkpoints)
        self._resumed_start = state.get("start", state.get("start_epoch"))
        if not len(self.epochs) == len(self.paths) == len(self.outputs):
            raise ValueError(
                "ConformalEarlyStopping: corrupted state: "
                f"{len(self.epochs)} epochs, {len(self.paths)} paths, {len(self.outputs)} outputs."
            )


class ConformalPredictor:
    """Conformal inference from the candidates of one run: CES and its baselines.

    Args:
        model: a module with the candidates' architecture (weights are loaded per candidate).
        record: :meth:`ConformalEarlyStopping.record` output (or ``holdout.pt`` of a run).
        method: ``ces`` (the paper), or a baseline: ``naive`` (the model with the smallest
            hold-out loss, calibrated on the same hold-out set: not valid in theory),
            ``naive_theory`` (``naive`` at the paper's corrected level, valid and
            conservative; it changes the level of sets and intervals, not p-values),
            ``data_splitting`` (select on half of the hold-out set, calibrate on the other
            half; the paper's benchmark trains a separate model, see
            ``benchmarks/ces.py``), ``full`` (the last candidate, calibrated on the hold-out
            set).
        split_seed: seed of the data-splitting halves.
        checkpoint_batch: candidates evaluated together through ``torch.func.vmap``.
        root: the directory the record's relative candidate paths refer to (default: the
            record's ``root``; :meth:`from_run_dir` passes the directory of ``holdout.pt``).
    """

    def __init__(
        self,
        model: nn.Module,
        record: dict[str, Any],
        method: str = "ces",
        split_seed: int = 0,
        checkpoint_batch: int = 16,
        root: str | Path | None = None,
    ) -> None:
        self.method = check_choice("method", method, METHODS)
        check_range("checkpoint_batch", checkpoint_batch, low=1, integer=True)
        self.task = check_choice("task", record["task"], TASKS)
        self.record = record
        self.holdout = record["outputs"].to(torch.float64)  # (T, n, ...)
        self.targets = record.get("targets")
        self.wrapper = CandidateOutputs(model, self.task)
        self.split_seed = split_seed
        self.checkpoint_batch = int(checkpoint_batch)
        base = root if root is not None else record.get("root")
        self.root = None if base is None else Path(base)
        self.quantiles = core.check_quantile_levels(list(record.get("quantiles", (0.05, 0.95))))
        n = self.holdout.shape[1]
        g = torch.Generator().manual_seed(int(record.get("aps_seed", 0)))
        self.holdout_u = (
            torch.rand(n, generator=g, dtype=torch.float64)
            if record.get("randomized", True)
            else None
        )
        self._states: list[dict[str, Tensor]] | None = None
        self._warned_levels: set[float] = set()

    @classmethod
    def from_run_dir(
        cls, run: str | Path, model: nn.Module, method: str = "ces"
    ) -> ConformalPredictor:
        """Loads ``<run>/ces/holdout.pt`` (or ``<run>/holdout.pt``) written at the end of fit.

        Candidate files are found next to ``holdout.pt``, so a moved or copied run
        directory loads.
        """
        run = Path(run)
        for path in (run / "ces" / HOLDOUT_FILE, run / HOLDOUT_FILE):
            if path.exists():
                try:
                    record = torch.load(path, weights_only=True)
                except Exception as err:
                    raise ValueError(
                        f"cannot read the CES record {path} ({type(err).__name__}: {err}); it may "
                        "be truncated or not written by ConformalEarlyStopping."
                    ) from err
                return cls(model, record, method=method, root=path.parent)
        raise FileNotFoundError(
            f"no {HOLDOUT_FILE} under {run} or {run / 'ces'}: was the run fitted with "
            "ConformalEarlyStopping?"
        )

    # --- candidate outputs on new points ---------------------------------------------

    def _load_states(self) -> list[dict[str, Tensor]]:
        if self._states is None:
            states = []
            for name in self.record["paths"]:
                path = _candidate_path(name, self.root)
                if not path.exists():
                    raise FileNotFoundError(
                        f"CES candidate file {path} is missing (the record lists "
                        f"{len(self.record['paths'])} candidates); restore it or refit."
                    )
                try:
                    blob = torch.load(path, weights_only=True, map_location="cpu")
                    state = blob["state_dict"]
                except Exception as err:
                    raise ValueError(
                        f"cannot read CES candidate file {path} ({type(err).__name__}: {err}); "
                        "it may be truncated or corrupted. Restore it or refit."
                    ) from err
                states.append({f"model.{k}": v for k, v in state.items()})
            expected = set(self.wrapper.state_dict())
            if set(states[0]) != expected:
                raise ValueError(
                    f"the model given to ConformalPredictor does not match the stored candidates: "
                    f"keys differ ({sorted(set(states[0]) ^ expected)[:5]} ...)."
                )
            self._states = states
        return self._states

    @torch.no_grad()
    def candidate_outputs(self, x: Any) -> Tensor:
        """Every candidate's outputs on inputs ``x``: (T, m, ...), candidates batched by vmap."""
        states = self._load_states()
        self.wrapper.eval()
        chunks = []
        for lo in range(0, len(states), self.checkpoint_batch):
            group = states[lo : lo + self.checkpoint_batch]
            stacked = {k: torch.stack([s[k] for s in group]) for k in group[0]}
            try:
                out = torch.func.vmap(
                    lambda params, inp: torch.func.functional_call(self.wrapper, params, (inp,)),
                    in_dims=(0, None),
                )(stacked, x)
            except RuntimeError:  # an op without a batching rule: fall back to one at a time
                out = torch.stack(
                    [torch.func.functional_call(self.wrapper, s, (x,)) for s in group]
                )
            chunks.append(out.to(torch.float64))
        return torch.cat(chunks)

    # --- inference from outputs ------------------------------------------------------

    def level(self, alpha: float) -> float:
        """The miscoverage level this method calibrates at: ``alpha``, or corrected (naive_theory)."""
        if self.method != "naive_theory":
            return alpha
        return core.naive_corrected_alpha(self.holdout.shape[0], self.holdout.shape[1], alpha)

    def _warn_level(self, alpha: float) -> None:
        """Says once per level when it is too small for the calibration points (whole line)."""
        if alpha in self._warned_levels:
            return
        self._warned_levels.add(alpha)
        level = self.level(alpha)
        _, cal = self._split_indices()
        if level <= 0:
            message: str | None = (
                f"method='naive_theory' corrects alpha={alpha} to {level:.3g} <= 0 for "
                f"{self.holdout.shape[0]} candidates and {len(cal)} points: every interval is "
                "the whole line and every set holds every label."
            )
        elif self.task == "classification" and self.targets is not None:
            message = checks.class_counts_message(level, self.targets[cal], self.conditional)
        else:
            message = checks.alpha_message(level, len(cal), "calibration points")
        if message:
            warnings.warn(f"ConformalPredictor: {message}", UserWarning, stacklevel=3)

    def _split_indices(self) -> tuple[Tensor, Tensor]:
        """Selection and calibration indices of a baseline (halves for data splitting)."""
        n = self.holdout.shape[1]
        if self.method != "data_splitting":
            return torch.arange(n), torch.arange(n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        return perm[: n // 2], torch.sort(perm[n // 2 :]).values

    def _baseline(self) -> tuple[int, Tensor]:
        """The fixed candidate and calibration indices of a baseline method."""
        stop, cal = self._split_indices()
        if self.method == "full":
            return self.holdout.shape[0] - 1, cal
        return int(torch.argmin(self._holdout_losses(stop))), cal

    def _quantile_losses(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        assert self.targets is not None
        out, y = self.holdout[:, idx], self.targets[idx].to(torch.float64)
        lo, hi = self.quantiles
        return (
            core.pinball_loss(out[..., 0], y, lo).sum(1),
            core.pinball_loss(out[..., 1], y, hi).sum(1),
        )

    def _holdout_losses(self, idx: Tensor) -> Tensor:
        out = self.holdout[:, idx]
        if self.task == "classification":
            assert self.targets is not None
            y = self.targets[idx].long()
            p = out.gather(2, y.view(1, -1, 1).expand(out.shape[0], -1, 1)).squeeze(2)
            return -torch.log(p.clamp_min(torch.finfo(torch.float64).tiny)).sum(1)
        if self.task == "regression":
            assert self.targets is not None
            return ((out - self.targets[idx].to(torch.float64)) ** 2).sum(1)
        if self.task == "quantile":
            lo, hi = self._quantile_losses(idx)
            return lo + hi
        return out.sum(1)

    def p_values_from_outputs(self, test: Tensor, test_u: Tensor | None = None) -> Tensor:
        """p-values from candidate outputs on the test points (T, m, ...).

        ``naive_theory`` gives the naive p-values: its correction is to the level (see
        :meth:`level`), which :meth:`predict_set` applies.

        Returns:
            (m,) for outlier detection, (m, K) for classification.
        """
        if self.task in ("regression", "quantile"):
            raise ValueError(
                "p-values are for task='outlier' or 'classification'; use predict_interval "
                f"for task={self.task!r}."
            )
        test = test.to(torch.float64)
        if self.task == "outlier":
            if self.method == "ces":
                return core.ces_outlier_p_values(self.holdout, self.holdout, test, test).p_values
            t, cal = self._baseline()
            return core.split_outlier_p_values(self.holdout[t, cal], test[t])
        assert self.targets is not None
        if test_u is None and self.holdout_u is not None:
            test_u = torch.rand(
                test.shape[1], generator=torch.Generator().manual_seed(self.split_seed + 1)
            )
        if self.method == "ces":
            return core.ces_classification_p_values(
                self.holdout, self.targets, test, self.holdout_u, test_u, self.conditional
            ).p_values
        t, cal = self._baseline()
        u = None if self.holdout_u is None else self.holdout_u[cal]
        return core.split_classification_p_values(
            self.holdout[t, cal], self.targets[cal], test[t], u, test_u, self.conditional
        )

    @property
    def conditional(self) -> bool:
        """Label-conditional (True) or marginal calibration for classification."""
        return bool(self.record.get("conditional", True))

    def intervals_from_outputs(
        self, test: Tensor, alpha: float, union: bool = False
    ) -> core.RegressionIntervals:
        """Intervals from candidate outputs on the test points: (T, m) or (T, m, 2) quantiles."""
        if self.task not in ("regression", "quantile"):
            raise ValueError(
                "intervals are for task='regression' or 'quantile', this predictor is for "
                f"{self.task!r}."
            )
        assert self.targets is not None
        self._warn_level(alpha)
        test = test.to(torch.float64)
        y = self.targets.to(torch.float64)
        if self.task == "quantile":
            return self._quantile_intervals(test, y, alpha, union)
        if self.method == "ces":
            return core.ces_regression_intervals(self.holdout, y, test, alpha, union=union)
        t, cal = self._baseline()
        lo, hi = self._split_or_line(
            lambda a: core.split_regression_intervals(self.holdout[t, cal], y[cal], test[t], a),
            test[t],
            alpha,
        )
        pieces = (lo.unsqueeze(1), hi.unsqueeze(1)) if union else (None, None)
        return core.RegressionIntervals(lo, hi, *pieces)

    def _split_or_line(self, split: Any, like: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        level = self.level(alpha)
        if level <= 0:  # naive_theory with no valid finite level: the whole line
            return torch.full_like(like, -math.inf), torch.full_like(like, math.inf)
        return split(level)

    def _quantile_intervals(
        self, test: Tensor, y: Tensor, alpha: float, union: bool
    ) -> core.RegressionIntervals:
        h = self.holdout
        if self.method == "ces":
            return core.ces_quantile_intervals(
                h[..., 0], h[..., 1], y, test[..., 0], test[..., 1], alpha, self.quantiles, union
            )
        stop, cal = self._split_indices()
        if self.method == "full":
            a = b = h.shape[0] - 1
        else:
            lo_loss, hi_loss = self._quantile_losses(stop)
            a, b = int(lo_loss.argmin()), int(hi_loss.argmin())
        lo, hi = self._split_or_line(
            lambda lvl: core.split_quantile_intervals(
                h[a, cal, 0], h[b, cal, 1], y[cal], test[a, :, 0], test[b, :, 1], lvl
            ),
            test[a, :, 0],
            alpha,
        )
        pieces = (lo.unsqueeze(1), hi.unsqueeze(1)) if union else (None, None)
        return core.RegressionIntervals(lo, hi, *pieces)

    # --- public API on inputs --------------------------------------------------------

    def p_values(self, x: Any) -> Tensor:
        """Conformal p-values of new inputs: (m,) outlier detection, (m, K) classification."""
        return self.p_values_from_outputs(self.candidate_outputs(x))

    def predict_set(self, x: Any, alpha: float) -> Tensor:
        """Prediction sets at level ``1 - alpha`` as a boolean mask (m, K)."""
        if self.task != "classification":
            raise ValueError(
                f"prediction sets are for task='classification', this predictor is for "
                f"{self.task!r}."
            )
        p = self.p_values(x)
        sets = core.prediction_sets(p, alpha)  # validates alpha
        self._warn_level(alpha)
        return p > self.level(alpha) if self.method == "naive_theory" else sets

    def predict_interval(
        self, x: Any, alpha: float, union: bool = False
    ) -> core.RegressionIntervals:
        """Prediction intervals at level ``1 - alpha`` (convex hull; the union on request)."""
        return self.intervals_from_outputs(self.candidate_outputs(x), alpha, union=union)
