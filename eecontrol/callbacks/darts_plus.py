"""``DARTSPlusStopping``: the DARTS+ early-stopping criteria for a DARTS search."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback, check_choice, check_range
from eecontrol.callbacks._darts_parts import (  # noqa: F401  (PROTOCOL re-exported)
    PROTOCOL,
    build_space,
    check_evidence,
    check_place,
    export_genotype,
    log_check,
    read_alphas,
    record_check,
    report_criteria,
    stop_reason_text,
    write_artifacts,
)
from eecontrol.callbacks._darts_schedule import (
    CHECK_UNITS,
    check_ops,
    has_validation,
    never_stops_message,
    planned_checks,
)
from eecontrol.callbacks._trainer import AfterTrainBatch
from eecontrol.core.darts import (
    CRITERIA,
    SCOPES,
    DartsPlusCriteria,
    Derivation,
    Genotype,
    SearchSpace,
)


class DARTSPlusStopping(ControlCallback, AfterTrainBatch):
    """Stops a DARTS architecture search with the DARTS+ criteria.

    Liang et al., "DARTS+: Improved Differentiable Architecture Search with Early
    Stopping" (2019). DARTS searches collapse into cells full of ``skip_connect`` when run
    long; DARTS+ stops the search when (criterion 1) the derived normal cell has
    ``max_skip`` (2) skip-connects, or (criterion 2) the ranking of the architecture
    weights over the learnable ops has not changed for ``patience`` (10) epochs.

    The check runs once per epoch in ``on_train_epoch_end`` (after the epoch's
    architecture updates, before ``ModelCheckpoint`` saves the epoch's checkpoint, so a
    resumed run continues the stability counter exactly). Step-based searches
    (``Trainer(max_steps=N)``, a stream, which has a single epoch) check at every
    ``check_period``-th validation (``check_unit="validations"``) or optimizer step
    (``check_unit="steps"``); ``patience`` then counts checks, and ``min_epochs`` completed
    checks. Under DDP the weights of rank zero are broadcast, so every rank derives the
    same genotype and decides the same; under FSDP the full (unsharded) weights are read.

    The protocol the LightningModule implements:

    - ``arch_parameters() -> {"normal": Tensor, "reduce": Tensor}``: raw (pre-softmax)
      architecture weights, one ``(edges, ops)`` tensor per cell type (``reduce`` optional);
    - ``op_names``: the op names, one per column (DARTS: ``none``, ``max_pool_3x3``, ...);
    - optionally ``steps`` (intermediate nodes; default inferred from the edge count) and
      ``multiplier`` (how many last nodes form the cell output; default ``steps``).

    Each epoch it logs ``darts_plus/skip_normal``, ``darts_plus/skip_reduce`` and
    ``darts_plus/stable_epochs``, prints the genotype text, and writes in
    ``<run dir>/<artifact_dir>/``: ``history.json`` (per epoch: genotype, skip counts,
    counter, criteria) and ``alphas.npz`` (per epoch softmax(alpha) of every cell). At the
    stop (or at the end of a search that never stopped) it writes ``genotype.json``, the
    DARTS-style genotype to retrain.

    Example::

        trainer = L.Trainer(max_epochs=50, callbacks=[DARTSPlusStopping(criterion="skip")])

    Args:
        max_skip: criterion 1 holds when the normal cell has at least this many
            ``skip_connect`` ops, an integer >= 1.
        patience: criterion 2 holds after this many epochs without a ranking change, an
            integer >= 1.
        criterion: ``skip`` (criterion 1), ``stable`` (criterion 2), ``either`` or ``both``
            (both hold at the same epoch).
        scope: what criterion 2 compares: ``both`` cells' learnable-op ranking (default),
            ``normal`` only, or ``genotype`` (the derived genotype unchanged).
        min_epochs: no stop before this many epochs are complete, an integer >= 0.
        stop_training: if False, record when each criterion holds but never stop (for
            benchmarks: one long search shows where each criterion would have stopped).
        learnable_ops: the ops ranked by criterion 2 (default: names starting with
            ``sep_conv``, ``dil_conv`` or ``conv``).
        none_op: the zero op's name (never chosen in a genotype).
        skip_op: the op counted by criterion 1.
        derive: a custom genotype derivation ``(alphas, space) -> Genotype`` for other
            search spaces (default: DARTS's).
        artifact_dir: sub-directory of the run directory for the artefacts.
        prog_bar: show the skip count and the counter in the progress bar.
        check_unit: when the criteria are checked: ``epochs`` (default, the paper: at each
            epoch end), ``validations`` (at the end of each validation during fit) or
            ``steps`` (after optimizer steps, ``trainer.global_step``). With a unit other
            than epochs, ``patience`` and ``min_epochs`` count checks.
        check_period: check every this many units, an integer >= 1.
    """

    def __init__(
        self,
        max_skip: int = 2,
        patience: int = 10,
        criterion: str = "either",
        scope: str = "both",
        min_epochs: int = 5,
        stop_training: bool = True,
        learnable_ops: Sequence[str] | None = None,
        none_op: str = "none",
        skip_op: str = "skip_connect",
        derive: Derivation | None = None,
        artifact_dir: str = "darts_plus",
        prog_bar: bool = True,
        check_unit: str = "epochs",
        check_period: int = 1,
    ) -> None:
        super().__init__()
        check_range("max_skip", max_skip, low=1, integer=True)
        check_range("patience", patience, low=1, integer=True)
        check_range("min_epochs", min_epochs, low=0, integer=True)
        self.criterion = check_choice("criterion", criterion, CRITERIA)
        self.scope = check_choice("scope", scope, SCOPES)
        self.check_unit = check_choice("check_unit", check_unit, CHECK_UNITS)
        check_range("check_period", check_period, low=1, integer=True)
        check_ops(learnable_ops, none_op, skip_op)
        if not artifact_dir or os.path.isabs(artifact_dir) or ".." in Path(artifact_dir).parts:
            raise ValueError(
                f"`artifact_dir` must be a relative sub-directory name, got {artifact_dir!r}."
            )
        self.max_skip = int(max_skip)
        self.patience = int(patience)
        self.min_epochs = int(min_epochs)
        self.stop_training = bool(stop_training)
        self.learnable_ops = None if learnable_ops is None else tuple(learnable_ops)
        self.none_op = str(none_op)
        self.skip_op = str(skip_op)
        self.derive = derive
        self.artifact_dir = str(artifact_dir)
        self.prog_bar = prog_bar
        self.check_period = int(check_period)
        # progress (state)
        self._history: list[dict[str, Any]] = []
        self._alphas: dict[str, list[Tensor]] = {}
        self._fired: dict[str, int | None] = {"skip": None, "stable": None}
        self._genotype: dict[str, Any] | None = None
        self._tracker_state: dict[str, Any] = {"signature": None, "stable_epochs": 0}
        self._validations = 0  # validations seen during fit (check_unit="validations")
        # per fit
        self._criteria: DartsPlusCriteria | None = None
        self._space: SearchSpace | None = None
        self._seen_step = -1

    @override
    def _config(self) -> dict[str, Any]:
        config = self._attributes(
            "max_skip", "patience", "criterion", "scope", "min_epochs", "stop_training"
        )
        config["learnable_ops"] = None if self.learnable_ops is None else list(self.learnable_ops)
        return {**config, **self._attributes("skip_op", "check_unit", "check_period")}

    @override
    def _identity(self) -> dict[str, Any]:
        return self._attributes("criterion", "scope", "max_skip", "patience")

    # --- public results -------------------------------------------------------------

    @property
    def genotype(self) -> Genotype | None:
        """The genotype at the stop, else at the last check (None before any check)."""
        return None if self._genotype is None else Genotype.from_dict(self._genotype)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per checked epoch: genotype, skip counts, counter, criteria."""
        return [dict(r) for r in self._history]

    @property
    def fired_epochs(self) -> dict[str, int | None]:
        """The first epoch (>= ``min_epochs``) at which each criterion held, or None."""
        return dict(self._fired)

    # --- hooks ----------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        build_space(self, pl_module, read_alphas(trainer, pl_module))
        self._seen_step = int(trainer.global_step)
        if self.check_unit == "validations" and (
            trainer.limit_val_batches == 0 or not has_validation(trainer)
        ):
            raise ValueError(
                "DARTSPlusStopping: `check_unit`='validations' but this fit runs no validation "
                "(no val_dataloader or limit_val_batches=0); the criteria would never be "
                "checked. Use check_unit='epochs' or 'steps', or give a validation loader."
            )
        if self.stop_training:
            message = never_stops_message(self, trainer, planned_checks(self, trainer))
            if message:
                rank_zero_warn(f"DARTSPlusStopping: {message}", category=UserWarning)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.check_unit != "epochs":
            return
        epoch = int(trainer.current_epoch)
        if (epoch + 1) % self.check_period:
            return
        if self._history and self._history[-1]["epoch"] >= epoch:
            return  # already checked (a resumed run replaying an epoch end)
        self._run_check(trainer, pl_module, epoch)

    @override
    def after_train_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int
    ) -> None:
        if self.check_unit != "steps":
            return
        step = int(trainer.global_step)
        if step <= self._seen_step:  # no optimizer step since the last batch (accumulation)
            return
        due = step // self.check_period * self.check_period > max(self._seen_step, 0)
        self._seen_step = step
        if due and not (self._history and self._history[-1]["step"] >= step):
            self._run_check(trainer, pl_module, len(self._history))

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_unit != "validations" or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._validations += 1
        if self._validations % self.check_period == 0:
            self._run_check(trainer, pl_module, len(self._history))

    def _run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        """One DARTS+ check; ``index`` is the epoch (epochs unit) or the check's number."""
        alphas = read_alphas(trainer, pl_module)
        if trainer.world_size > 1:
            alphas = trainer.strategy.broadcast(alphas, src=0)
        if self._criteria is None:
            build_space(self, pl_module, alphas)
        assert self._criteria is not None
        result = self._criteria.update(alphas, index)
        self._tracker_state = self._criteria.state_dict()
        record_check(self, trainer, alphas, result)
        log_check(self, pl_module, result)
        report_criteria(self, trainer, result)
        if self.stop_training:
            first = self.stopped_epoch is None
            stopped = self._stop(
                trainer,
                result.stop,
                stop_reason_text(self, result),
                check_evidence(self, result),
            )
            if stopped and first:
                self._genotype = result.genotype.to_dict()
                export_genotype(self, trainer, "stop")
        if trainer.is_global_zero:
            write_artifacts(self, trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopped_epoch is None and self._history:
            export_genotype(self, trainer, "end of search")

    # --- what the user sees ---------------------------------------------------------

    @override
    def progress_fields(self) -> dict[str, str]:
        if not self._history:
            return {}
        last = self._history[-1]
        return {
            "skips": f"{last['skips'].get('normal', 0)}/{self.max_skip}",
            "stable": f"{last['stable_epochs']}/{self.patience}",
        }

    @override
    def summary(self) -> dict[str, Any]:
        out = super().summary()
        if self._history:
            last = self._history[-1]
            out["DARTSPlusStopping/skip_normal"] = last["skips"].get("normal", 0)
            out["DARTSPlusStopping/stable_epochs"] = last["stable_epochs"]
        for key, epoch in self._fired.items():
            out[f"DARTSPlusStopping/{key}_epoch"] = epoch
        if self._genotype is not None:
            out["DARTSPlusStopping/genotype"] = str(Genotype.from_dict(self._genotype))
        return out

    # --- state ----------------------------------------------------------------------

    @override
    def _progress_state(self) -> dict[str, Any]:
        return {
            "history": self._history,
            "alphas": {k: torch.stack(v) for k, v in self._alphas.items() if v},
            "fired": dict(self._fired),
            "genotype": self._genotype,
            "tracker": dict(self._tracker_state),
            "validations": self._validations,
        }

    @override
    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self._history = [dict(r) for r in state.get("history", [])]
        self._alphas = {k: list(v.unbind(0)) for k, v in (state.get("alphas") or {}).items()}
        fired = dict(state.get("fired") or {})
        self._fired = {"skip": fired.get("skip"), "stable": fired.get("stable")}
        self._genotype = state.get("genotype")
        self._tracker_state = dict(state.get("tracker") or {"signature": None, "stable_epochs": 0})
        self._validations = int(state.get("validations", 0))
        if self._criteria is not None:
            self._criteria.load_state_dict(self._tracker_state)
