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
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._distributed import release_process_group_at_worker_exit
from eecontrol.core.checks import check_choice, check_range  # noqa: F401  (re-exported)
from eecontrol.util.files import append_line, safe_file

log = logging.getLogger(__name__)

DECISIONS_FILE = "decisions.jsonl"
STATE_VERSION = 1

Evidence = dict[str, float | int | str | bool | None]


@dataclass(frozen=True)
class Decision:
    """One action a callback took, with the numbers that justify it.

    Args:
        step: ``trainer.global_step`` (optimizer steps done) when the decision was made.
        epoch: ``trainer.current_epoch`` when the decision was made.
        callback: the deciding callback's class name (what tables, plots and W&B show).
        action: a short verb, e.g. ``"stop"``, ``"freeze"``, ``"set_rate"``.
        reason: one human sentence saying why.
        evidence: primitives only (numbers, strings, booleans) that justify the action.
        key: the deciding instance's ``state_key`` (tells two instances of a class apart).
    """

    step: int
    epoch: int
    callback: str
    action: str
    reason: str
    evidence: Evidence = field(default_factory=dict)
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON- and ``weights_only``-safe dict of primitives."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """Builds a decision from :meth:`to_dict` output.

        Raises:
            ValueError: if a field is missing.
        """
        missing = [k for k in ("step", "epoch", "callback", "action", "reason") if k not in data]
        if missing:
            raise ValueError(f"decision record is missing fields {missing}: {dict(data)!r}")
        return cls(
            step=int(data["step"]),
            epoch=int(data["epoch"]),
            callback=str(data["callback"]),
            action=str(data["action"]),
            reason=str(data["reason"]),
            evidence=dict(data.get("evidence") or {}),
            key=str(data.get("key", "")),
        )


def _clean_evidence(evidence: Mapping[str, Any] | None) -> Evidence:
    """Converts evidence values to JSON-safe primitives (tensors and numpy scalars included)."""
    out: Evidence = {}
    for key, value in (evidence or {}).items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[str(key)] = value
        elif isinstance(value, int):
            out[str(key)] = int(value)
        elif isinstance(value, float):
            out[str(key)] = float(value) if math.isfinite(value) else str(value)
        else:
            out[str(key)] = str(value)
    return out


_LOWER_IS_BETTER = ("loss", "error", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl")
_HIGHER_IS_BETTER = ("acc", "accuracy", "f1", "auc", "auroc", "precision", "recall", "r2", "iou")


def lower_is_better(metric: str) -> bool | None:
    """What a metric's name says about its direction: True (a loss), False (an accuracy), None.

    The name is split on ``/``, ``_``, ``-`` and ``.``; ``val/loss``, ``val_loss`` and
    ``train/mse`` are losses, ``val/acc`` and ``test_f1`` are scores.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", metric.lower()) if w]
    if any(w in _LOWER_IS_BETTER for w in words):
        return True
    if any(w in _HIGHER_IS_BETTER for w in words):
        return False
    return None


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


def _journal_loses(path: Path, decisions: list[Decision], trainer: pl.Trainer) -> bool:
    """Whether rewriting ``path`` from ``decisions`` drops a decision made before the checkpoint."""
    loaded = getattr(trainer._checkpoint_connector, "_loaded_checkpoint", None) or {}
    step = loaded.get("global_step")
    kept = {json.dumps(d.to_dict()) for d in decisions}
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip() or line in kept:
            continue
        try:
            made_at = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            return True  # an unreadable line: keep the file
        if step is None or made_at < int(step):
            return True
    return False


def _write_journal(trainer: pl.Trainer) -> None:
    """Rewrites ``decisions.jsonl`` from the callbacks' state (rank zero, once per fit).

    The file is a view of the callbacks' state: after a resume it holds exactly the
    decisions made up to the checkpoint (decisions written after it by a killed process
    are dropped, since the resumed run makes them again). A file left by another fit in
    the same directory is kept as ``decisions.jsonl.N`` rather than overwritten, and so is
    a journal whose decisions up to the checkpoint are not in the restored state (e.g. a
    callback whose identity changed between the runs). A symlink there is replaced, never
    followed.
    """
    if not trainer.is_global_zero:
        return
    path = safe_file(run_dir(trainer) / DECISIONS_FILE)
    decisions = all_decisions(trainer)
    resuming = trainer.ckpt_path is not None
    if (
        path.exists()
        and path.stat().st_size > 0
        and (
            (not resuming and not decisions)
            or (resuming and _journal_loses(path, decisions, trainer))
        )
    ):
        n = 1
        while path.with_name(f"{DECISIONS_FILE}.{n}").exists():
            n += 1
        backup = path.with_name(f"{DECISIONS_FILE}.{n}")
        path.rename(backup)
        rank_zero_info(f"eecontrol: kept the previous fit's decisions as {backup}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = safe_file(path.with_name(path.name + ".tmp"))
    with tmp.open("w") as f:
        for d in decisions:
            f.write(json.dumps(d.to_dict()) + "\n")
    os.replace(tmp, path)


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
            evidence=_clean_evidence(evidence),
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
            _write_journal(trainer)
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
