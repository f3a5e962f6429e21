"""The shared decision contract of every eecontrol callback.

Every action a callback takes (stop, freeze, set a rate, select a checkpoint) is a
:class:`Decision`. :class:`ControlCallback` records it in the callback's state (so a
resumed run knows it), appends it to ``decisions.jsonl`` in the run directory (rank zero),
reports it to the Trainer's loggers and to the console, and makes stop decisions identical
on every rank through ``trainer.strategy.reduce_boolean_decision``.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._distributed import release_process_group_at_worker_exit
from eecontrol.callbacks._journal import write_journal
from eecontrol.callbacks._trainer import *  # noqa: F403  (re-exported: see its __all__)
from eecontrol.callbacks._trainer import reduce_stop, run_dir
from eecontrol.core.checks import check_choice, check_range  # noqa: F401  (re-exported)
from eecontrol.core.decision import (  # noqa: F401  (re-exported)
    DECISIONS_FILE,
    Decision,
    Evidence,
    clean_evidence,
    lower_is_better,
)
from eecontrol.util.files import append_line

log = logging.getLogger(__name__)

STATE_VERSION = 1


def control_callbacks(trainer: pl.Trainer) -> list[ControlCallback]:
    """Returns the trainer's eecontrol callbacks in their order."""
    return [cb for cb in trainer.callbacks if isinstance(cb, ControlCallback)]


def all_decisions(trainer: pl.Trainer) -> list[Decision]:
    """Returns every decision of every eecontrol callback, ordered by step."""
    decisions: list[tuple[int, int, int, Decision]] = []
    for cb_idx, cb in enumerate(control_callbacks(trainer)):
        for i, d in enumerate(cb.decisions):
            decisions.append((d.step, cb_idx, i, d))
    return [d for *_, d in sorted(decisions, key=lambda x: x[:3])]


class ControlCallback(Callback):
    """Base class of eecontrol callbacks: the decision record, stop sync and state rules.

    Subclasses implement :meth:`_config` (the constructor arguments that matter, as
    primitives), :meth:`_progress_state` / :meth:`_load_progress_state` (what must survive
    a resume), and call :meth:`_decide` for every action and :meth:`_stop` to stop.
    """

    def __init__(self) -> None:
        super().__init__()
        self._decisions: list[Decision] = []
        self.stopped_epoch: int | None = None
        self.stopped_step: int | None = None
        self.stop_reason: str | None = None
        #: ``"fresh"``, ``"resumed"`` (state loaded from a checkpoint) or ``"continued"``
        #: (``fit`` again on the same Trainer without a checkpoint), set at ``on_fit_start``.
        self.fit_kind: str | None = None
        self._initial_progress: dict[str, Any] | None = None
        self._loaded_for_fit = False
        self._fit_trainer: str | None = None

    # --- identity and configuration -------------------------------------------------

    @property
    def name(self) -> str:
        """The instance's name: its ``state_key`` (decisions' ``key``)."""
        return self.state_key

    @property
    def decisions(self) -> list[Decision]:
        """The decisions this callback made so far (resumed ones included)."""
        return list(self._decisions)

    def _config(self) -> dict[str, Any]:
        """The constructor arguments that define this callback, as primitives."""
        return {}

    def _identity(self) -> dict[str, Any]:
        """The arguments that distinguish two instances in ``state_key``."""
        return self._config()

    def _attributes(self, *names: str) -> dict[str, Any]:
        """``{name: getattr(self, name)}`` in the order given (for :meth:`_config`)."""
        return {name: getattr(self, name) for name in names}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self._identity())

    # --- decisions ------------------------------------------------------------------

    def _decide(
        self,
        trainer: pl.Trainer,
        action: str,
        reason: str,
        evidence: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Records one decision: state, ``decisions.jsonl`` (rank zero), loggers, console.

        Args:
            trainer: the running trainer.
            action: a short verb naming what was done.
            reason: one sentence saying why.
            evidence: the numbers that justify it.

        Returns:
            The recorded decision.
        """
        decision = Decision(
            step=int(trainer.global_step),
            epoch=int(trainer.current_epoch),
            callback=type(self).__name__,
            action=action,
            reason=reason,
            evidence=clean_evidence(evidence),
            key=self.name,
        )
        self._decisions.append(decision)
        if trainer.is_global_zero:
            path = run_dir(trainer) / DECISIONS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            append_line(path, json.dumps(decision.to_dict()))  # never through a symlink
            rank_zero_info(
                f"eecontrol [{type(self).__name__}] step {decision.step} epoch {decision.epoch}: "
                f"{action}: {reason}"
            )
        self._report_to_loggers(trainer, decision)
        return decision

    def _report_to_loggers(self, trainer: pl.Trainer, decision: Decision) -> None:
        """Sends a decision to the loggers as numbers (safe in every hook).

        W&B is left out: there every decision, with its evidence, is one row of the
        ``eecontrol/decisions`` table (``eecontrol.report.wandb``), not one-point series.
        """
        metrics = {f"eecontrol/{type(self).__name__}/{decision.action}": 1.0}
        for key, value in decision.evidence.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"eecontrol/{type(self).__name__}/{decision.action}/{key}"] = float(value)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                continue
            logger.log_metrics(metrics, step=trainer.global_step)

    def _stop(
        self,
        trainer: pl.Trainer,
        should_stop: bool,
        reason: str,
        evidence: Mapping[str, Any] | None = None,
    ) -> bool:
        """Stops training on every rank if any rank asks to, and records the decision.

        Must be called on every rank at the same point (it runs a collective under DDP).

        Returns:
            Whether training stops.
        """
        if trainer.fast_dev_run:
            return False
        agreed = reduce_stop(trainer, should_stop)
        if agreed and self.stopped_epoch is None:
            self.stopped_epoch = int(trainer.current_epoch)
            self.stopped_step = int(trainer.global_step)
            # The same reason on every rank, so that all ranks' decisions are identical.
            self.stop_reason = reason
            self._decide(trainer, "stop", self.stop_reason, evidence)
        return agreed

    # --- what the user sees ---------------------------------------------------------

    def progress_fields(self) -> dict[str, str]:
        """Short live fields for the progress bar, e.g. ``{"frozen": "12/42"}``."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Numbers and short strings for a run summary (W&B ``run.summary``, sweep tables).

        Subclasses extend this with their own results (frozen fraction, coverage, ...).
        """
        name = type(self).__name__
        out: dict[str, Any] = {f"{name}/decisions": len(self._decisions)}
        if self.stopped_epoch is not None:
            out[f"{name}/stop_reason"] = self.stop_reason
            out[f"{name}/stopped_epoch"] = self.stopped_epoch
            out[f"{name}/stopped_step"] = self.stopped_step
        return out

    # --- lifecycle ------------------------------------------------------------------

    def _snapshot_initial(self) -> None:
        """Keeps the progress of a callback that has not run yet (what a fresh fit starts from)."""
        if self._initial_progress is None:
            self._initial_progress = copy.deepcopy(self._progress_state())

    def _reset_progress(self) -> None:
        """Returns progress to the state of a new instance (a fresh fit of a reused callback).

        The default clears decisions and the stop and loads the progress snapshot taken
        before the instance's first fit or checkpoint load. Subclasses with per-fit fields
        that ``_load_progress_state`` does not set extend it.
        """
        self._decisions = []
        self.stopped_epoch = None
        self.stopped_step = None
        self.stop_reason = None
        if self._initial_progress is not None:
            self._load_progress_state(copy.deepcopy(self._initial_progress))

    def _begin_fit(self, trainer: pl.Trainer) -> None:
        """Classifies this fit (fresh, resumed, continued) and starts a reused instance fresh.

        A fit is *resumed* when this callback's state was loaded since its last fit (a
        checkpoint passed as ``ckpt_path``, or ``load_state_dict``), *continued* when the
        same Trainer fits again without a checkpoint (progress, stop and plans carry on,
        as Lightning's loops do), and *fresh* otherwise: an instance reused with a new
        Trainer (a loop over folds or seeds) drops the previous fit's decisions, stop and
        progress, and says so in one line.
        """
        token = trainer.__dict__.setdefault("_eecontrol_trainer_id", uuid.uuid4().hex)
        if self._loaded_for_fit:
            self.fit_kind = "resumed"
        elif self._fit_trainer is None:
            self.fit_kind = "fresh"
            self._snapshot_initial()
        elif self._fit_trainer == token:
            self.fit_kind = "continued"
        else:
            self.fit_kind = "fresh"
            dropped = len(self._decisions)
            self._reset_progress()
            rank_zero_info(
                f"eecontrol [{type(self).__name__}]: a new Trainer without a checkpoint: "
                f"starting fresh (the previous fit's {dropped} decision(s), stop and progress "
                f"are dropped; pass ckpt_path to resume instead)."
            )
        self._loaded_for_fit = False
        self._fit_trainer = token

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after a checkpoint's callback states are restored. The first eecontrol
        # callback starts the fit of all of them, so the journal sees every reset.
        if control_callbacks(trainer)[0] is self:
            for cb in control_callbacks(trainer):
                cb._begin_fit(trainer)
            write_journal(trainer, all_decisions(trainer))
        if self.stopped_epoch is not None:
            how = "continued fit" if self.fit_kind == "continued" else "resume"
            rank_zero_info(
                f"eecontrol [{type(self).__name__}]: this run was stopped at epoch "
                f"{self.stopped_epoch} ({self.stop_reason}); not training again after {how}."
            )
            trainer.should_stop = True

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning calls this only when a stage ends normally: a ddp_spawn/ddp_fork worker
        # then ends with a barrier and destroy_process_group() instead of aborting at exit.
        release_process_group_at_worker_exit(trainer)

    # --- state ----------------------------------------------------------------------

    def _progress_state(self) -> dict[str, Any]:
        """Progress that must survive a resume (primitives and tensors only)."""
        return {}

    def _load_progress_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`_progress_state` output."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "decisions": [d.to_dict() for d in self._decisions],
            "stopped_epoch": self.stopped_epoch,
            "stopped_step": self.stopped_step,
            "stop_reason": self.stop_reason,
            "progress": self._progress_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        self._snapshot_initial()
        self._loaded_for_fit = True
        if not isinstance(state_dict, Mapping) or "version" not in state_dict:
            raise ValueError(
                f"{name}: the checkpoint's callback state has no 'version' key: it was written "
                f"by another callback or an older eecontrol. Resume with a checkpoint written "
                f"by eecontrol state version {STATE_VERSION}, or start a fresh run."
            )
        if state_dict["version"] != STATE_VERSION:
            raise ValueError(
                f"{name}: checkpoint state version {state_dict['version']!r} is not supported "
                f"(this eecontrol reads version {STATE_VERSION})."
            )
        saved_config = dict(state_dict.get("config") or {})
        current = self._config()
        changed = {
            k: (saved_config.get(k), v) for k, v in current.items() if saved_config.get(k) != v
        }
        if changed:
            rank_zero_warn(
                f"{name}: configuration differs from the checkpoint's; using the constructor's "
                f"values (checkpoint -> now): "
                + ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            )
        self._decisions = [Decision.from_dict(d) for d in state_dict.get("decisions", [])]
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self.stopped_step = state_dict.get("stopped_step")
        self.stop_reason = state_dict.get("stop_reason")
        self._load_progress_state(dict(state_dict.get("progress") or {}))
