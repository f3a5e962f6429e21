"""``ResumableCheckpoint``: a ``last.ckpt`` that exists when a run dies, and signal handling.

It writes ``last.ckpt`` at the end of every training epoch (and every
``every_n_train_steps`` optimizer steps if set), and on SIGTERM / SIGUSR1 / SIGINT saves
``last.ckpt`` and ends the process with a non-zero status (128 + the signal number).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from eecontrol.util.files import (
    CHECKPOINT_DIR,
    LAST,
    UnsafeRunDirError,
    is_remote,
    refuse_symlinks,
    replace_atomically,
)

__all__ = [
    "CHECKPOINT_DIR",
    "LAST",
    "CheckpointWriteError",
    "ResumableCheckpoint",
    "UnsafeRunDirError",
]

_SIGNALS = {"SIGINT": 130, "SIGTERM": 143, "SIGUSR1": 138}


class ResumableCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` every epoch (optionally every N steps) and when the run is signalled.

    Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` only
    when training ends, so a killed run has nothing to resume from. This subclass saves it at
    every training epoch end (after validation and every callback's epoch-end decision),
    every ``every_n_train_steps`` optimizer steps when set, and when the process receives
    SIGTERM (what SLURM and most schedulers send before preemption), SIGUSR1 or SIGINT
    (Ctrl-C): the signal is turned into Lightning's own SIGTERM path (all DDP ranks stop at
    the next batch boundary), ``last.ckpt`` is written and the process exits with status
    128 + signal number. A second SIGINT interrupts at once. Under SLURM with Lightning's
    auto-requeue, SIGUSR1 is left to Lightning (it saves an ``hpc_ckpt`` and requeues).

    Args:
        dirpath: where ``last.ckpt`` (and any top-k checkpoints) go.
        every_n_train_steps: also write ``last.ckpt`` every N optimizer steps (None: only at
            epoch ends). A mid-epoch checkpoint resumes with Lightning's restart of the
            epoch's data iterator (see docs/resume.md for what holds then).
        handle_signals: save and exit non-zero on SIGTERM / SIGUSR1 / SIGINT.
        **kwargs: any other ``ModelCheckpoint`` argument (``save_top_k``, ``monitor``, ...).
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        every_n_train_steps: int | None = None,
        handle_signals: bool = True,
        **kwargs: Any,
    ) -> None:
        if every_n_train_steps is not None and (
            isinstance(every_n_train_steps, bool)
            or not isinstance(every_n_train_steps, int)
            or every_n_train_steps < 1
        ):
            raise ValueError(
                f"`every_n_train_steps` must be None or an integer in [1, inf), "
                f"got {every_n_train_steps!r}."
            )
        if kwargs.get("save_last", True) is not True:
            raise ValueError(
                f"ResumableCheckpoint always writes last.ckpt: `save_last` must be true, "
                f"got {kwargs['save_last']!r}."
            )
        kwargs["save_last"] = True
        kwargs.setdefault("save_top_k", 0)
        kwargs.setdefault("save_on_train_epoch_end", True)
        kwargs.setdefault("enable_version_counter", False)  # always overwrite last.ckpt
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, **kwargs)
        # Lightning resolves dirpath (realpath): the directory as given, to refuse a link there
        self._given_dir = (
            Path(dirpath) if dirpath is not None and not is_remote(str(dirpath)) else None
        )
        self.handle_signals = bool(handle_signals)
        self.received_signal: int | None = None
        self._trainer: pl.Trainer | None = None
        self._previous: dict[int, Any] = {}
        # the epoch-end training metrics Lightning logs only after on_train_epoch_end (after
        # this save): kept in the checkpoint so a resume logs them (see pending_row)
        self._pending: dict[str, Any] | None = None
        self.pending_row: dict[str, Any] | None = None  # restored from a checkpoint
        self._metrics: dict[str, float] = {}
        self.restored_metrics: dict[str, float] = {}  # callback metrics at the checkpoint
        self._at_epoch_end = False  # saving from on_train_epoch_end (see on_save_checkpoint)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=str(self.dirpath), kind="resumable")

    # --- saving ----------------------------------------------------------------------

    def save_last_now(self, trainer: pl.Trainer, epoch_end: bool = False) -> None:
        """Writes ``last.ckpt`` unless it already holds this optimizer step.

        Every logger is flushed first (no row logged before the checkpoint is lost). At an
        epoch end (``epoch_end``), the epoch's training metrics, which Lightning logs only
        after this hook, go into the checkpoint, so a resume logs that row if the killed
        process never did.
        """
        if self._should_skip_saving_checkpoint(trainer):
            return
        for lg in trainer.loggers:
            lg.save()
        self._pending = _pending_epoch_row(trainer) if epoch_end else None
        self._metrics = _float_metrics(trainer.callback_metrics)
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._pending = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._at_epoch_end = True
        try:
            super().on_train_epoch_end(trainer, pl_module)
            self.save_last_now(trainer, epoch_end=True)
        finally:
            self._at_epoch_end = False

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Under ``max_steps``, an epoch-end checkpoint resumes with the right epoch counter.

        Lightning counts an epoch processed before the ``on_train_epoch_end`` hooks and
        completed after them, so a checkpoint written there holds ``processed = completed
        + 1``. With ``max_steps`` Lightning always resumes as "restarting": it replays the
        epoch end and counts the epoch processed a second time, so the next epoch's sampler
        gets epoch ``e + 2`` (``set_epoch(processed)``) while ``current_epoch`` is ``e + 1``
        and the data order differs from the uninterrupted run. Recording the epoch as not
        yet processed makes the replayed epoch end count it once. Without ``max_steps``
        Lightning resumes these checkpoints correctly; they are left as they are.
        """
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if not self._at_epoch_end or trainer.max_steps in (-1, None):
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
        for part in ("total", "current"):
            counts = (progress or {}).get(part)
            if counts and counts.get("processed") == counts.get("completed", 0) + 1:
                counts["processed"] = counts["completed"]

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["eecontrol_pending_row"] = self._pending
        state["eecontrol_metrics"] = dict(self._metrics)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.pending_row = state_dict.get("eecontrol_pending_row")
        self.restored_metrics = dict(state_dict.get("eecontrol_metrics") or {})

    @override
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Writes ``filepath`` atomically: a temporary file beside it, fsync, ``os.replace``.

        A kill during the save leaves the previous checkpoint; so does a full disk, which
        is a :class:`CheckpointWriteError` naming the file. The directory and the file must
        not be symbolic links (:class:`UnsafeRunDirError`).
        """
        if is_remote(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        target = Path(filepath)
        if trainer.is_global_zero:
            refuse_symlinks(target, "a checkpoint")
            if self._given_dir is not None:
                refuse_symlinks(self._given_dir / target.name, "a checkpoint")
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                replace_atomically(tmp, target)
        except OSError as err:
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)
            raise CheckpointWriteError(
                f"could not write the checkpoint {target} ({err.strerror or err}); "
                f"the previous checkpoint there is intact."
            ) from err
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self.save_last_now(trainer)

    # --- signals ---------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.handle_signals:
            self._install(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._uninstall()
        super().teardown(trainer, pl_module, stage)

    def _install(self, trainer: pl.Trainer) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._trainer = trainer
        self.received_signal = None
        wanted = [signal.SIGINT]
        env = trainer._accelerator_connector.cluster_environment
        from lightning.fabric.plugins.environments import SLURMEnvironment

        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue):
            wanted.append(signal.SIGUSR1)  # Lightning's SLURM requeue owns SIGUSR1 otherwise
        for sig in wanted:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        # SIGTERM: Lightning installs its own handler when training starts and calls this
        # one after it (it keeps handlers it finds); this one only remembers the signal.
        self._previous[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _uninstall(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}
        self._trainer = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received_signal == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        if self.received_signal is None:
            self.received_signal = signum
            rank_zero_info(
                f"eecontrol: received {signal.Signals(signum).name}; saving last.ckpt at the "
                f"next batch boundary, then exiting with status {128 + signum}."
            )
        if signum == signal.SIGTERM or self._trainer is None:
            return  # Lightning's SIGTERM handler (composed with this one) does the rest
        lightning = signal.getsignal(signal.SIGTERM)
        if callable(lightning) and lightning != self._on_signal:
            lightning(signal.SIGTERM, frame)  # Lightning's notifier: every DDP rank stops
        else:
            self._trainer._signal_connector.received_sigterm = True

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, SIGTERMException | KeyboardInterrupt)
        if not interrupted:
            super().on_exception(trainer, pl_module, exception)
            return
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        self.save_last_now(trainer)
        signum = self.received_signal or (
            signal.SIGINT if isinstance(exception, KeyboardInterrupt) else signal.SIGTERM
        )
        rank_zero_info(
            f"eecontrol: interrupted by {signal.Signals(signum).name}; saved {self.last_model_path}"
        )
        if isinstance(exception, SystemExit):
            exception.code = 128 + int(signum)  # Lightning's SIGTERMException would exit 0


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, no permission); the previous one is intact."""


def _float_metrics(metrics: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in dict(metrics).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def _pending_epoch_row(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The row Lightning logs right after ``on_train_epoch_end``: its metrics and step."""
    if not trainer.loggers:
        return None
    from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

    try:  # the values exactly as Lightning converts them for the loggers
        logged = convert_tensors_to_scalars(dict(trainer._logger_connector.metrics["log"]))
    except Exception:  # no result collection: nothing pending
        return None
    metrics = {str(k): v for k, v in logged.items() if isinstance(v, int | float)}
    if not metrics:
        return None
    metrics["epoch"] = int(trainer.current_epoch)  # an int, as Lightning logs it
    step = int(trainer.fit_loop.epoch_loop._batches_that_stepped) - 1
    return {"step": step, "metrics": metrics}
