"""Checkpoints that exist when a run dies, signal handling, and resumes equal to uninterrupted runs.

- :class:`ResumableCheckpoint`: a ``ModelCheckpoint`` that writes ``last.ckpt`` at the end of
  every training epoch (and every ``every_n_train_steps`` optimizer steps if set), and on
  SIGTERM / SIGUSR1 / SIGINT saves ``last.ckpt`` and ends the process with a non-zero status
  (128 + the signal number).
- :class:`EpochSeed`: reseeds Python, NumPy and torch from ``seed + epoch`` at each epoch's
  first batch, so dropout masks after a resume at an epoch boundary equal the uninterrupted run's.
- :class:`EpochSeededSampler`: a shuffling sampler whose order is a function of
  ``seed + epoch`` only (Lightning calls ``set_epoch``), not of the global RNG's history.
- :func:`resume_overrides`: what ``eecontrol-train resume=<run dir>`` turns into.
- :func:`redact_url`: hides the password of a database URL before it is logged or written.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
import signal
import sys
from collections.abc import Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Sampler
from typing_extensions import override

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
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


class UnsafeRunDirError(RuntimeError):
    """A write in the run directory would go through a symbolic link."""


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


def replace_atomically(tmp: Path, target: Path) -> None:
    """``os.replace(tmp, target)`` after fsync of ``tmp``; then fsync of the directory."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    try:
        dfd = os.open(target.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def refuse_symlinks(path: str | Path, what: str, root: str | Path | None = None) -> None:
    """Raises :class:`UnsafeRunDirError` if ``path`` or a directory above it is a symlink.

    Checked up to ``root`` (not included; default: the parent of ``path``'s directory), so
    a run directory may itself live under a linked path (``logs -> /scratch/logs``) but
    nothing inside it may redirect a write.
    """
    path = Path(path)
    stop = Path(root) if root is not None else path.parent.parent
    current = path
    while current != stop and current.parent != current:
        if current.is_symlink():
            raise UnsafeRunDirError(
                f"{current} is a symbolic link (to {os.readlink(current)}); eecontrol never "
                f"writes {what} through a link in a run directory. Remove the link (or resume "
                f"a copy of the run made without it)."
            )
        current = current.parent


class EpochSeed(Callback):
    """Reseeds Python, NumPy and torch from ``seed + epoch`` at each epoch's first batch.

    Dropout masks and any other random draw in epoch ``e`` then depend on ``(seed, e)`` only,
    so a run resumed from an epoch-end checkpoint draws exactly what the uninterrupted run
    drew. The data order is handled by :class:`EpochSeededSampler`. A no-op when ``seed``
    is None.

    With ``per_batch=True`` every later batch of the epoch is reseeded too, from
    ``(seed, epoch, batch index)``: the draws of a batch then depend on where it is, not on
    the process's history, so a resume from a **mid-epoch** checkpoint (every N steps, a
    signal; on a stream one epoch is the whole run) draws the same dropout masks. Together
    with a :class:`ResumableDataLoader` (whose position this callback keeps up to date)
    such a resume equals the uninterrupted run.

    Args:
        seed: the run's seed (``seed`` in ``train.yaml``), or None.
        per_batch: also reseed at every batch (needed for exact mid-epoch resumes).
    """

    training_only = True  # never looks at hold-out metrics (ConformalEarlyStopping checks this)

    def __init__(self, seed: int | None = None, per_batch: bool = False) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be None or an integer, got {seed!r}.")
        if not isinstance(per_batch, bool):
            raise ValueError(f"`per_batch` must be true or false, got {per_batch!r}.")
        self.seed = seed
        self.per_batch = per_batch

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # At the epoch's first batch, not in on_train_epoch_start: a restarted epoch creates
        # its data iterator (which draws a seed from the global RNG) at another point.
        if self.seed is None or (batch_idx != 0 and not self.per_batch):
            return
        if batch_idx == 0:
            value = (self.seed + int(trainer.current_epoch)) % (2**32)
        else:
            key = f"{self.seed}:{int(trainer.current_epoch)}:{batch_idx}".encode()
            value = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        for loader in _resumable_loaders(trainer):
            loader.position = {"epoch": int(trainer.current_epoch), "consumed": batch_idx + 1}

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for loader in _resumable_loaders(trainer):  # the next pass starts at its beginning
            loader.position = {"epoch": int(trainer.current_epoch) + 1, "consumed": 0}


def _resumable_loaders(trainer: pl.Trainer) -> list[ResumableDataLoader]:
    loader = getattr(trainer.fit_loop, "_combined_loader", None)
    flat = getattr(loader, "flattened", []) if loader is not None else []
    return [dl for dl in flat if isinstance(dl, ResumableDataLoader)]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the current pass is saved in the checkpoint.

    Lightning saves the ``state_dict`` of every training loader that has one and loads it
    before the resumed epoch's iterator is created. This loader's state is the number of
    batches the training loop consumed in the current pass (kept up to date by
    :class:`EpochSeed`, which must be among the callbacks, with ``per_batch=True`` for the
    dropout masks); after a mid-epoch resume, the
    first iterator skips that many batches, so the run continues with the batch the killed
    process would have drawn next. On a stream (an ``IterableDataset``: one epoch is the
    whole run) this is what makes a resume exact.

    What the data must do: yield the same sequence again for the same pass (its order
    drawn from its own generator seeded by the seed and the pass, not from the global RNG),
    with ``num_workers=0`` or a deterministic split across workers. Skipping replays the
    skipped batches (their loading costs time, not training).

    Args:
        *args: as ``DataLoader``.
        **kwargs: as ``DataLoader``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position: dict[str, int] = {"epoch": 0, "consumed": 0}
        self._skip = 0

    def state_dict(self) -> dict[str, int]:
        """The pass and the batches of it the training loop consumed."""
        return dict(self.position)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Makes the next iterator skip the batches consumed before the checkpoint."""
        self.position = {
            "epoch": int(state_dict.get("epoch", 0)),
            "consumed": int(state_dict.get("consumed", 0)),
        }
        self._skip = self.position["consumed"]

    def __iter__(self) -> Any:
        iterator = super().__iter__()
        skip, self._skip = self._skip, 0
        for _ in range(skip):
            try:
                next(iterator)
            except StopIteration:
                break
        return iterator


class EpochSeededSampler(Sampler[int]):
    """Shuffles ``range(len(data))`` with a generator seeded by ``seed + epoch``.

    Lightning calls :meth:`set_epoch` before every training epoch (also under DDP, through
    its distributed sampler wrapper), so epoch ``e``'s order is the same in an uninterrupted
    and in a resumed run. Used without Lightning, each iteration advances the epoch.

    Args:
        data: the dataset (only its length is used).
        seed: the base seed.
    """

    def __init__(self, data: Sized, seed: int = 0) -> None:
        self.n = len(data)
        self.seed = int(seed)
        self.epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)
        self._epoch_set = True

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed((self.seed + self.epoch) % (2**63))
        order = torch.randperm(self.n, generator=g).tolist()
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        yield from order


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted.

    It never writes through a symbolic link (``metrics.csv``, ``hparams.yaml`` or a directory
    up to the logger's ``save_dir``): :class:`UnsafeRunDirError`.
    """

    def __init__(self, log_dir: str, root: str) -> None:
        self._root = root
        refuse_symlinks(Path(log_dir) / self.NAME_METRICS_FILE, "metrics", root)
        super().__init__(log_dir=log_dir)

    def save(self) -> None:
        refuse_symlinks(Path(self.metrics_file_path), "metrics", self._root)
        refuse_symlinks(Path(self.log_dir) / self.NAME_HPARAMS_FILE, "hyperparameters", self._root)
        super().save()

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file() and not path.is_symlink():
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """A ``CSVLogger`` whose ``metrics.csv`` continues across a resume in the same directory.

    Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so the
    epochs before a resume were lost. Call :meth:`truncate` with the checkpoint's step
    before resuming: rows the killed process logged after its checkpoint are dropped (the
    resumed run logs them again), every earlier row is kept.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir, root=str(self.save_dir))
        return self._experiment

    def truncate(self, step: int, pending: dict[str, Any] | None = None) -> int:
        """Drops the rows of ``metrics.csv`` logged at ``step`` or later; returns how many.

        ``pending`` (the checkpoint's :attr:`ResumableCheckpoint.pending_row`: the epoch-end
        training row Lightning logs just after the checkpoint) is written if the killed
        process never wrote it.
        """
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        refuse_symlinks(path, "metrics", self.save_dir)
        if pending and not _has_row(path, pending):
            self.log_metrics(dict(pending["metrics"]), step=int(pending["step"]))
            self.save()
        if not path.is_file():
            return 0
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        keep = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(keep) < len(rows):
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(keep)
            os.replace(tmp, path)
        return len(rows) - len(keep)


def _has_row(path: Path, pending: dict[str, Any]) -> bool:
    """Whether ``metrics.csv`` has a row at the pending step with all its metrics."""
    if not path.is_file():
        return False
    step = int(pending["step"])
    keys = [k for k in pending["metrics"] if k != "epoch"]
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if (
                row.get("step")
                and int(float(row["step"])) == step
                and all(row.get(k) not in (None, "") for k in keys)
            ):
                return True
    return False


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` stored in a local checkpoint (loaded with ``weights_only=True``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


# --- the command line: resume=<run dir> ----------------------------------------------

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``http://``, ``s3://``, ...) rather than a local path."""
    return bool(_REMOTE.match(str(path))) and not str(path).startswith("file://")


_RUN_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{2}-\d{2}-\d{2}-\d{6})$")


def _started(run: Path) -> tuple[int, str]:
    """A run directory's start time as a sort key: its timestamped name, else its mtime."""
    if _RUN_NAME.match(run.name):
        return (1, run.name)  # Hydra's ${now:...}_${now:...}: sorts as the start time
    return (0, f"{run.stat().st_mtime:020.6f}")


def latest_run(runs_dir: Path) -> Path:
    """``resume=last``: the newest run directory under ``runs_dir`` that has a ``last.ckpt``.

    "Newest" is the run that started last (the timestamp Hydra puts in the directory name;
    the modification time for other names), not the checkpoint written last: an older run
    resumed later is not "last". Newer runs that have no checkpoint are skipped with a
    warning naming them.

    Raises:
        FileNotFoundError: naming ``resume=last`` and the directory searched.
    """
    runs = sorted((p for p in runs_dir.glob("*") if p.is_dir()), key=_started)
    skipped: list[str] = []
    for run in reversed(runs):
        if (run / CHECKPOINT_DIR / LAST).is_file():
            if skipped:
                rank_zero_warn(
                    f"`resume=last`: newer runs without {CHECKPOINT_DIR}/{LAST} skipped: "
                    f"{', '.join(skipped)}."
                )
            return run
        skipped.append(run.name)
    raise FileNotFoundError(
        f"`resume=last`: no run with {CHECKPOINT_DIR}/{LAST} under {runs_dir} "
        f"(EECONTROL_ROOT moves logs/); pass `resume=<run dir>` instead."
    )


# keys and values of a recorded override that make Hydra run code or read configs from
# elsewhere: a resume never takes them from a run directory
_CODE_KEYS = ("_target_", "_partial_", "_args_", "_call_", "_recursive_", "_convert_")
_CODE_PREFIXES = (
    "hydra.searchpath",
    "hydra.callbacks",
    "hydra/",
    "hydra.job_logging",
    "hydra.hydra_logging",
    "hydra.job.env_set",
    "hydra.launcher",
    "hydra.sweeper",
)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def names_code(override: str) -> bool:
    """Whether an override can make Hydra instantiate a callable (or find configs elsewhere).

    True for a key or value with ``_target_`` (and ``_partial_``, ``_args_``, ...), and for
    Hydra's own search path, callbacks, launcher, sweeper and logging keys.
    """
    key = _key(override)
    value = override.split("=", 1)[1] if "=" in override else ""
    return any(k in key or k in value for k in _CODE_KEYS) or key.startswith(_CODE_PREFIXES)


class ResumeError(ValueError):
    """``resume=<run dir>`` cannot continue that run as asked (message says why and what to do)."""


def resume_overrides(
    value: str, runs_dir: Path, given: Sequence[str] = ()
) -> tuple[Path, list[str]]:
    """Turns ``resume=<run dir>`` (or ``resume=last``) into the Hydra overrides that continue it.

    The run's own command-line overrides (``.hydra/overrides.yaml``) come first, then the run
    directory (``hydra.run.dir``) and ``ckpt_path`` of its ``last.ckpt``, so the continued run
    composes the same config and writes into the same directory.

    A run directory is data: recorded overrides that can run code (:func:`names_code`:
    ``+callbacks.x._target_=...``, ``hydra.searchpath=...``) are never taken from it. Each
    must be given again on this command line (``given``), where the user sees it; otherwise
    this is a :class:`ResumeError` listing them.

    Args:
        value: a run directory, or ``last`` for the newest run under ``runs_dir``.
        runs_dir: where single runs go (``logs/train/runs``).
        given: the other overrides on this command line.

    Returns:
        The run directory and the overrides.

    Raises:
        FileNotFoundError: if the directory or its ``last.ckpt`` does not exist.
        ResumeError: for a URL, or recorded code-running overrides not given again.
    """
    import yaml

    if is_remote(value):
        raise ResumeError(f"`resume` must be a local run directory, got the URL {value!r}.")
    run = latest_run(runs_dir) if value == "last" else Path(value)
    if not run.is_dir():
        raise FileNotFoundError(f"`resume={value}`: no such run directory {run}.")
    ckpt = run / CHECKPOINT_DIR / LAST
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"`resume={value}`: {ckpt} does not exist; this run never reached its first "
            f"checkpoint (written at every epoch end), so there is nothing to resume."
        )
    saved = run / ".hydra" / "overrides.yaml"
    previous: list[str] = []
    if saved.is_file() and not saved.is_symlink():
        loaded = yaml.safe_load(saved.read_text()) or []
        if not isinstance(loaded, list):
            raise ResumeError(f"`resume={value}`: {saved} is not a list of overrides.")
        previous = [
            str(o) for o in loaded if not str(o).startswith(("ckpt_path=", "hydra.run.dir="))
        ]
    else:
        rank_zero_warn(f"`resume={value}`: {saved} is missing; composing the default config.")
    given_keys = {_key(o) for o in given}
    code = [o for o in previous if names_code(o)]
    missing = [o for o in code if _key(o) not in given_keys]
    if missing:
        quoted = " ".join(f"'{o}'" for o in missing)
        raise ResumeError(
            f"`resume={value}`: the run was started with overrides that name code to run or "
            f"configs to load: {missing}. A resume never takes them from a run directory "
            f"({saved}); if you trust them, give them again on this command line: "
            f"eecontrol-train resume={value} {quoted}"
        )
    previous = [o for o in previous if not names_code(o)]  # the repeated ones come later
    run = run.resolve()
    return run, [*previous, f"hydra.run.dir={run}", f"ckpt_path={run / CHECKPOINT_DIR / LAST}"]


def describe_checkpoint(path: Path) -> dict[str, Any]:
    """Step, epoch and write time of a local checkpoint, loaded with ``weights_only=True``.

    Raises:
        ResumeError: naming the file when it is not a loadable checkpoint (a crafted pickle,
            a truncated file), with the loader's first line.
    """
    import datetime

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # UnpicklingError, RuntimeError, EOFError, ...: the reason, without mmap
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            text = str(err)
            # torch's own reason (e.g. "Unsupported global: GLOBAL posix.system"), not its
            # advice to load with weights_only=False
            if "WeightsUnpickler error:" in text:
                text = "refused to unpickle: " + text.split("WeightsUnpickler error:", 1)[1]
            first = " ".join(text.split("Check the documentation")[0].split()) or "error"
            raise ResumeError(
                f"{path} is not a loadable checkpoint (torch.load(weights_only=True) refused "
                f"it: {type(err).__name__}: {first[:300]}); nothing was run."
            ) from None
    if not isinstance(ckpt, dict):
        raise ResumeError(f"{path} is not a Lightning checkpoint (a {type(ckpt).__name__}).")
    written = datetime.datetime.fromtimestamp(path.stat().st_mtime).isoformat(
        sep=" ", timespec="seconds"
    )
    return {
        "global_step": int(ckpt.get("global_step", 0)),
        "epoch": int(ckpt.get("epoch", 0)),
        "written": written,
    }


def rewrite_argv(argv: Sequence[str], runs_dir: Path) -> list[str]:
    """Replaces a ``resume=...`` argument of ``eecontrol-train`` by the overrides it stands for.

    Later arguments override the run's own (e.g. ``resume=<dir> trainer.max_epochs=20``).
    Before anything runs, it says on stderr which run and checkpoint it continues.

    Raises:
        ValueError: if ``resume`` is combined with ``-m`` / ``--multirun``, or for what
            :func:`resume_overrides` refuses.
    """
    args = list(argv)
    idx = [i for i, a in enumerate(args) if a.startswith(("resume=", "+resume="))]
    if not idx:
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise ValueError("`resume=<run dir>` continues one run; it cannot be used with -m.")
    value = args[idx[-1]].split("=", 1)[1]
    rest = [a for i, a in enumerate(args) if i not in idx]
    run, overrides = resume_overrides(value, runs_dir, [a for a in rest if "=" in a])
    check_run_dir(run)
    ckpt = run / CHECKPOINT_DIR / LAST
    info = describe_checkpoint(ckpt)
    recorded = overrides[:-2]
    print(
        f"eecontrol-train: resuming run {run} from {ckpt} (epoch {info['epoch']}, step "
        f"{info['global_step']}, written {info['written']}); its recorded overrides: "
        f"{redact_text(str(recorded)) if recorded else 'none'}"
        + (f"; given now: {redact_text(str(rest))}" if rest else ""),
        file=sys.stderr,
        flush=True,
    )
    return [*overrides, *rest]


# --- the run directory: one writer, no symlinks --------------------------------------

LOCK_FILE = ".eecontrol.lock"
_OWN_LINKS = ("wandb",)  # W&B makes its own links (latest-run, debug.log) inside wandb/


def check_run_dir(run: Path) -> None:
    """Refuses a run directory with a symbolic link anywhere inside it (before Hydra opens it).

    Hydra opens ``train.log`` and writes ``.hydra/`` before any eecontrol code runs, so a
    planted link there would be followed; this check runs first. Links that W&B itself
    makes inside ``wandb/`` and that stay inside the run directory are allowed.

    Raises:
        UnsafeRunDirError: naming the link and its target.
    """
    run = Path(run)
    root = run.resolve()
    for dirpath, dirnames, filenames in os.walk(run):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            rel = path.relative_to(run)
            inside = str(path.resolve()).startswith(str(root) + os.sep)
            if rel.parts[0] in _OWN_LINKS and inside:
                continue
            raise UnsafeRunDirError(
                f"{path} is a symbolic link (to {os.readlink(path)}); eecontrol never writes "
                f"through a link in a run directory. Remove the link (or resume a copy of the "
                f"run made without it)."
            )


class RunLock:
    """An exclusive lock on a run directory: one process writes it at a time.

    The lock file (``<run>/.eecontrol.lock``) holds the owner's pid, host and process start
    time. A second writer gets a :class:`RunLockedError` naming them. A lock left by a dead
    process on this host (a SIGKILL, a lost machine that is this one) is taken over with a
    warning; a lock from another host is never taken over (its process cannot be checked).

    Args:
        run: the run directory.
    """

    def __init__(self, run: str | Path) -> None:
        self.path = Path(run) / LOCK_FILE
        self.held = False

    @staticmethod
    def _me() -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}

    def acquire(self) -> None:
        """Takes the lock or raises :class:`RunLockedError`."""
        import json
        import socket

        refuse_symlinks(self.path, "its lock", self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                pid, host = owner.get("pid"), owner.get("host")
                if host == socket.gethostname() and pid == os.getpid():
                    return  # this process holds it already (taken before Hydra started)
                if (
                    host == socket.gethostname()
                    and isinstance(pid, int)
                    and not _alive(pid, owner.get("start"))
                ):
                    rank_zero_warn(
                        f"eecontrol: taking over the stale lock {self.path} of pid {pid} on "
                        f"{host} (that process is gone)."
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLockedError(
                    f"the run directory {self.path.parent} is in use by pid {pid} on host "
                    f"{host} (lock file {self.path}); two processes writing one run would "
                    f"duplicate its rows. Wait for it to end, or remove the lock file if that "
                    f"process is gone."
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._me()))
            self.held = True
            return
        raise RunLockedError(f"could not take the lock {self.path} (it keeps reappearing).")

    def release(self) -> None:
        """Removes the lock file if this process holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _start_time(pid: int) -> str | None:
    """A process's start time (``/proc/<pid>/stat`` field 22), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return start is None or now is None or now == start


# --- secrets -------------------------------------------------------------------------

# a URL's userinfo password (scheme://user:PASSWORD@host) and credential query parameters
# (?password=..., &token=...); both forms are hidden wherever a config or message is written
_SECRET_PARAMS = (
    "password|passwd|pwd|pass|secret|token|api_key|apikey|access_key|secret_key|"
    "auth|auth_token|access_token|sslpassword|key"
)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:\s'\"]*):[^/?#@\s'\"]*@")
_QUERY = re.compile(rf"(?P<head>[?&;](?:{_SECRET_PARAMS})=)[^&#\s'\"]*", re.IGNORECASE)


def redact_url(url: Any) -> Any:
    """Hides the credentials of a URL: ``postgresql://user:***@host/db?password=***``.

    Other values are returned unchanged.
    """
    if not isinstance(url, str):
        return url
    return redact_text(url)


def redact_secrets(obj: Any, secrets: Sequence[str] = ()) -> Any:
    """Returns ``obj`` (nested dicts / lists of primitives) with every credential hidden.

    Args:
        obj: the container.
        secrets: exact strings (e.g. values read from the environment) to replace by ``***``.
    """
    if isinstance(obj, dict):
        return {k: redact_secrets(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_secrets(v, secrets) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


# --- the run directory: never follow a symlink on write ---------------------------------


def safe_dir(path: Path) -> Path:
    """Makes ``path`` a real directory with no symlinks directly in it, and returns it.

    A symlink at ``path`` or inside it (e.g. ``report/report.html -> ~/.bashrc``) is removed,
    never followed, so writing into the run directory cannot change a file outside it.
    """
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_symlink():
            child.unlink()
    return path


def safe_file(path: Path) -> Path:
    """Returns ``path`` after removing a symlink at it (or at its directory); never follows one."""
    path = Path(path)
    if path.parent.is_symlink():
        path.parent.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    return path


def append_line(path: Path, line: str) -> None:
    """Appends one line to ``path`` without following a symlink (``O_NOFOLLOW``)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


def redact_text(text: str, secrets: Sequence[str] = ()) -> str:
    """Hides every URL password, credential query parameter and ``secrets`` inside ``text``."""
    out = _USERINFO.sub(lambda m: f"{m['head']}:***@", str(text))
    out = _QUERY.sub(lambda m: f"{m['head']}***", out)
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


_ENV_REF = re.compile(r"\$\{oc\.env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_SECRET_NAME = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|CRED|AUTH|STORAGE|STORE|URL|URI|DSN", re.I)


def env_secrets(text: str) -> list[str]:
    """Values of the environment variables a config reads with ``${oc.env:NAME}`` whose
    name suggests a credential or a database address (``*PASSWORD*``, ``*TOKEN*``,
    ``*KEY*``, ``*STORAGE*``, ``*URL*``, ...): written configs hide these values too."""
    names = {m["name"] for m in _ENV_REF.finditer(str(text))}
    return sorted(
        (os.environ[n] for n in names if _SECRET_NAME.search(n) and os.environ.get(n)),
        key=len,
        reverse=True,
    )


def check_store(store: Any) -> str | None:
    """Validates a curve-store argument: None / "" (no store), a SQLite path or a database URL.

    Raises:
        ValueError: naming ``store`` for anything else (``store=123`` is not a path).
    """
    if store is None or store == "":
        return None
    if isinstance(store, bool) or not isinstance(store, str | Path):
        raise ValueError(
            f"`store` must be a SQLite file path or a database URL string "
            f"(e.g. postgresql://user:pass@host/db), got {store!r}."
        )
    return str(store)


def check_study_name(study_name: Any) -> str:
    """Validates a study name: a non-empty string (``study_name=None`` is an error)."""
    if not isinstance(study_name, str) or not study_name.strip():
        raise ValueError(f"`study_name` must be a non-empty string, got {study_name!r}.")
    return study_name


def redact_hydra_files() -> None:
    """Rewrites the ``.hydra`` yamls of this job (and ``multirun.yaml``) without credentials.

    Hydra writes them before the job starts; URL passwords, ``password=`` query parameters
    and secret values read with ``${oc.env:...}`` are replaced by ``***`` (atomically; a
    link there is replaced, never followed). The job's own config keeps the real values.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    files = list((out / str(hc.output_subdir)).glob("*.yaml")) if hc.output_subdir else []
    files += (
        [Path(hc.sweep.dir) / "multirun.yaml"] if hc.mode and "MULTIRUN" in str(hc.mode) else []
    )
    for file in files:
        if not file.is_file() or file.is_symlink():
            continue
        text = file.read_text()
        clean = redact_text(text, env_secrets(text))
        if clean != text:
            tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
            tmp.write_text(clean)
            os.replace(tmp, file)
