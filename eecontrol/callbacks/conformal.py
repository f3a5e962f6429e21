"""``ConformalEarlyStopping``: the Lightning adapter that stores CES candidates during fit.

Liang, Zhou, Sesia, "Conformal inference is (almost) free for neural networks trained
with early stopping" (ICML 2023). The callback stores a candidate model every
``storage_period`` epochs (a weights-only checkpoint in the run directory) with its
per-sample outputs on the whole hold-out set (the validation split, in a fixed order).
Training runs the fixed number of epochs; the early-stopped model is chosen per test point
(and label) afterwards by :class:`~eecontrol.core.conformal.predictor.ConformalPredictor`,
which keeps the conformal guarantee although the same hold-out data served selection and
calibration. The module protocol (``ces_inputs``, ``ces_targets``, ``ces_outputs``) is
described in :mod:`eecontrol.core.conformal.outputs`. This adapter holds the state, hooks,
logging and decisions; ``_ces_guards``, ``_ces_plan``, ``_ces_holdout``, ``_ces_store`` and
``_ces_checks`` hold what it refuses, when it stores, the hold-out pass, the files and the
warnings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from eecontrol.callbacks import _ces_checks as checks
from eecontrol.callbacks import _ces_guards as guards
from eecontrol.callbacks import _ces_plan as plans
from eecontrol.callbacks._ces_holdout import NO_TARGETS, HoldoutSet, whole_split
from eecontrol.callbacks._ces_plan import StoragePlan
from eecontrol.callbacks._ces_results import CandidateResults
from eecontrol.callbacks._ces_store import check_stored, resolve_dir, store_weights
from eecontrol.callbacks._control import ControlCallback, check_choice, check_range
from eecontrol.core.conformal import check_quantile_levels
from eecontrol.core.conformal.candidates import HOLDOUT_FILE, write_run_files
from eecontrol.core.conformal.outputs import (
    INPUT_KEYS,
    TARGET_KEYS,
    CandidateOutputs,
    default_inputs,
    default_targets,
    split_batch,
)
from eecontrol.core.conformal.predictor import ConformalPredictor
from eecontrol.core.conformal.selection import METHODS, TASKS, holdout_losses

__all__ = [  # the names this module has always offered, wherever they live now
    "HOLDOUT_FILE",
    "HOLDOUT_WORDS",
    "INPUT_KEYS",
    "KNOWN_TRAINING_ONLY",
    "METHODS",
    "TARGET_KEYS",
    "TASKS",
    "CandidateOutputs",
    "ConformalEarlyStopping",
    "ConformalPredictor",
    "default_inputs",
    "default_targets",
]

HOLDOUT_WORDS = guards.HOLDOUT_WORDS
KNOWN_TRAINING_ONLY = guards.KNOWN_TRAINING_ONLY


class ConformalEarlyStopping(CandidateResults, ControlCallback):
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
        self.storage_unit = check_choice("storage_unit", storage_unit, plans.UNITS)
        check_range("storage_period", storage_period, low=1, integer=True)
        plans.check_storage_start(storage_start, storage_unit)
        check_range("alpha", alpha, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_range("holdout_batch_size", holdout_batch_size, low=1, integer=True)
        check_range("aps_seed", aps_seed, low=0, integer=True)
        prefixes = guards.check_prefixes(train_metric_prefixes)
        if candidates_dir is not None and not isinstance(candidates_dir, str | Path):
            raise ValueError(
                f"`candidates_dir` must be a directory path or None, got {candidates_dir!r}."
            )
        self.quantiles = check_quantile_levels(
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
        self.train_metric_prefixes = prefixes
        # progress
        self.epochs: list[int] = []
        self.steps: list[int] = []
        self.paths: list[str] = []  # relative to the candidates directory
        self.outputs: list[Tensor] = []
        self.targets: Tensor | None = None
        self.checked: dict[str, str] = {}
        self._dir: Path | None = None
        self._holdout: HoldoutSet | None = None
        self._lrs: list[float] | None = None
        self._warned: set[str] = set()

    @override
    def _config(self) -> dict[str, Any]:
        keys = ("task", "storage_period", "storage_start", "storage_unit", "alpha")
        keys += ("conditional", "aps_seed", "randomized")
        return {**self._attributes(*keys), "quantiles": list(self.quantiles)}

    @override
    def _identity(self) -> dict[str, Any]:
        return {"task": self.task}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"ConformalEarlyStopping: {message}", category=UserWarning)

    # --- hooks ----------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.checked = guards.check_trainer(
            trainer,
            pl_module,
            self,
            ConformalEarlyStopping,
            self.train_metric_prefixes,
            self._warn_once,
        )
        guards.check_module(pl_module, self.task, self.quantiles)
        self._dir = resolve_dir(trainer, self.candidates_dir)
        check_stored(trainer, self._dir, self.paths, own_dir=bool(self.candidates_dir))
        self._holdout = HoldoutSet.from_trainer(trainer)
        n = len(self._holdout)
        self._holdout.check_resumed(self.outputs)
        self._plan_storage(trainer, n)
        checks.refuse_fsdp_bypass(trainer, pl_module)
        self._holdout.check_outputs(trainer, pl_module, self.task)
        for key, message in (
            ("alpha", checks.alpha_message(self.alpha, n, "hold-out points")),
            ("order", checks.order_message(trainer, self)),
        ):
            if message:
                self._warn_once(key, message)

    def _plan_storage(self, trainer: pl.Trainer, n: int) -> None:
        """Fixes the storage plan for this fit and records it (again when it changed)."""
        unit = self.storage_unit
        total = plans.run_length(trainer, unit)
        self._start = plans.resolve_start(self.storage_start, total, unit)
        self._plan = plan = StoragePlan(unit, self.storage_period, self._start, total)
        self._seen_step = int(trainer.global_step)
        for key, message in plans.plan_messages(
            plan, self.storage_start, self._resumed_start, trainer.max_steps, bool(self.outputs)
        ):
            self._warn_once(key, message)
        evidence = plans.plan_evidence(plan, n, self.task, self.checked)
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

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lrs = [float(g["lr"]) for o in trainer.optimizers for g in o.param_groups if "lr" in g]
        if self._lrs is not None and lrs != self._lrs and not trainer.lr_scheduler_configs:
            self._warn_once("lr", checks.lr_message(self._lrs, lrs, trainer.current_epoch))
        self._lrs = lrs

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
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
        epoch, max_epochs = trainer.current_epoch, trainer.max_epochs or -1  # -1: unlimited
        if trainer.should_stop and epoch + 1 < max_epochs:  # stopped early (CES never stops)
            when = f"at epoch {epoch} of {max_epochs}"
            self._warn_once("stop", checks.stopped_message(trainer, self, when))
        if self.storage_unit != "epochs" or self._plan is None:
            return
        if not self._plan.due(epoch + 1) or epoch in self.epochs:
            return
        self._store(trainer, pl_module, f"candidate_epoch{epoch:04d}.pt")

    def _store(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        """Stores the current model as a candidate: its weights and its hold-out outputs."""
        epoch, step = int(trainer.current_epoch), int(trainer.global_step)
        assert self._holdout is not None and self._dir is not None
        out, targets = self._holdout.outputs(trainer, pl_module, self.task, self.holdout_batch_size)
        if self.task != "outlier":
            if targets is None:
                raise ValueError(NO_TARGETS)
            if self.targets is None:
                self.targets = targets
                if self.task == "classification":
                    message = checks.class_counts_message(self.alpha, targets, self.conditional)
                    if message:
                        self._warn_once("alpha", message)
        store_weights(trainer, self._dir / name)
        self.epochs.append(epoch)
        self.steps.append(step)
        self.paths.append(name)
        self.outputs.append(out)
        per_epoch = self.storage_unit == "epochs"
        log: dict[str, bool] = (
            {"on_epoch": True} if per_epoch else {"on_step": True, "on_epoch": False}
        )
        pl_module.log("ces/holdout_loss", self._holdout_losses(out)[0], **log)
        pl_module.log("ces/candidates", float(len(self.epochs)), **log)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Whatever the callbacks' order: did the run end before its planned length?
        plan = self._plan
        if plan is None or plan.total is None or not trainer.should_stop:
            return
        done = trainer.current_epoch if plan.unit == "epochs" else trainer.global_step
        if done < plan.total:
            when = f"at {plan.unit[:-1]} {done} of {plan.total}"
            self._warn_once("stop", checks.stopped_message(trainer, self, when))

    def _holdout_losses(self, *outputs: Tensor) -> list[float]:
        """The selection loss on the hold-out set of the given candidate outputs (default: all)."""
        stacked = torch.stack(list(outputs) or self.outputs)
        return holdout_losses(self.task, stacked, self.targets, self.quantiles).tolist()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(self.epochs) < 2:
            planned = None if self._plan is None else self._plan.candidates
            self._warn_once("stored", checks.few_candidates_message(len(self.epochs), planned))
        if not self.epochs:
            return
        if self.task == "quantile":
            message = checks.swapped_quantiles_message(
                self.outputs[-1], self.epochs[-1], self.quantiles
            )
            if message:
                self._warn_once("swapped", message)
        losses = self._holdout_losses()
        best = min(range(len(losses)), key=losses.__getitem__)
        if trainer.is_global_zero and self._dir is not None:
            write_run_files(self._dir, self.record(), losses)
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
        dm = trainer.datamodule
        if not self.outputs or dm is None or not hasattr(dm, "test_dataloader"):
            return
        loader = dm.test_dataloader()
        x, y = split_batch(pl_module, whole_split(loader))
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
