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
import os
import random
import re
import signal
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
from torch.utils.data import Sampler
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
        self.handle_signals = bool(handle_signals)
        self.received_signal: int | None = None
        self._trainer: pl.Trainer | None = None
        self._previous: dict[int, Any] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=str(self.dirpath), kind="resumable")

    # --- saving ----------------------------------------------------------------------

    def save_last_now(self, trainer: pl.Trainer) -> None:
        """Writes ``last.ckpt`` unless it already holds this optimizer step."""
        if self._should_skip_saving_checkpoint(trainer):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.save_last_now(trainer)

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


class EpochSeed(Callback):
    """Reseeds Python, NumPy and torch from ``seed + epoch`` at each epoch's first batch.

    Dropout masks and any other random draw in epoch ``e`` then depend on ``(seed, e)`` only,
    so a run resumed from an epoch-end checkpoint draws exactly what the uninterrupted run
    drew. The data order is handled by :class:`EpochSeededSampler`. A no-op when ``seed``
    is None.

    Args:
        seed: the run's seed (``seed`` in ``train.yaml``), or None.
    """

    training_only = True  # never looks at hold-out metrics (ConformalEarlyStopping checks this)

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be None or an integer, got {seed!r}.")
        self.seed = seed

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # At the epoch's first batch, not in on_train_epoch_start: a restarted epoch creates
        # its data iterator (which draws a seed from the global RNG) at another point.
        if self.seed is None or batch_idx != 0:
            return
        value = (self.seed + int(trainer.current_epoch)) % (2**32)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)


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
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted."""

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
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def truncate(self, step: int) -> int:
        """Drops the rows of ``metrics.csv`` logged at ``step`` or later; returns how many."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file() or path.is_symlink():
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


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` stored in a local checkpoint (loaded with ``weights_only=True``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


# --- the command line: resume=<run dir> ----------------------------------------------

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``http://``, ``s3://``, ...) rather than a local path."""
    return bool(_REMOTE.match(str(path))) and not str(path).startswith("file://")


def latest_run(runs_dir: Path) -> Path:
    """The most recently modified run directory under ``runs_dir`` that has a ``last.ckpt``.

    Raises:
        FileNotFoundError: naming ``resume=last`` and the directory searched.
    """
    found = sorted(
        (p for p in runs_dir.glob(f"*/{CHECKPOINT_DIR}/{LAST}") if p.is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise FileNotFoundError(
            f"`resume=last`: no run with {CHECKPOINT_DIR}/{LAST} under {runs_dir} "
            f"(EECONTROL_ROOT moves logs/); pass `resume=<run dir>` instead."
        )
    return found[-1].parents[1]


def resume_overrides(value: str, runs_dir: Path) -> tuple[Path, list[str]]:
    """Turns ``resume=<run dir>`` (or ``resume=last``) into the Hydra overrides that continue it.

    The run's own command-line overrides (``.hydra/overrides.yaml``) come first, then the run
    directory (``hydra.run.dir``) and ``ckpt_path`` of its ``last.ckpt``, so the continued run
    composes the same config and writes into the same directory.

    Args:
        value: a run directory, or ``last`` for the newest run under ``runs_dir``.
        runs_dir: where single runs go (``logs/train/runs``).

    Returns:
        The run directory and the overrides.

    Raises:
        FileNotFoundError: if the directory or its ``last.ckpt`` does not exist.
        ValueError: for a URL.
    """
    import yaml

    if is_remote(value):
        raise ValueError(f"`resume` must be a local run directory, got the URL {value!r}.")
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
    if saved.is_file():
        previous = [
            str(o)
            for o in (yaml.safe_load(saved.read_text()) or [])
            if not str(o).startswith(("ckpt_path=", "hydra.run.dir="))
        ]
    else:
        rank_zero_warn(f"`resume={value}`: {saved} is missing; composing the default config.")
    run = run.resolve()
    return run, [*previous, f"hydra.run.dir={run}", f"ckpt_path={run / CHECKPOINT_DIR / LAST}"]


def rewrite_argv(argv: Sequence[str], runs_dir: Path) -> list[str]:
    """Replaces a ``resume=...`` argument of ``eecontrol-train`` by the overrides it stands for.

    Later arguments override the run's own (e.g. ``resume=<dir> trainer.max_epochs=20``).

    Raises:
        ValueError: if ``resume`` is combined with ``-m`` / ``--multirun``.
    """
    args = list(argv)
    idx = [i for i, a in enumerate(args) if a.startswith(("resume=", "+resume="))]
    if not idx:
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise ValueError("`resume=<run dir>` continues one run; it cannot be used with -m.")
    value = args[idx[-1]].split("=", 1)[1]
    _, overrides = resume_overrides(value, runs_dir)
    rest = [a for i, a in enumerate(args) if i not in idx]
    return [*overrides, *rest]


# --- secrets -------------------------------------------------------------------------

_PASSWORD = re.compile(r"^(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:]*):(?P<pw>[^/?#@]*)@")


def redact_url(url: Any) -> Any:
    """Hides the password of a URL: ``postgresql://user:***@host/db``; other values unchanged."""
    if not isinstance(url, str):
        return url
    return _PASSWORD.sub(lambda m: f"{m['head']}:***@", url)


def redact_secrets(obj: Any) -> Any:
    """Returns ``obj`` (nested dicts / lists of primitives) with every URL password hidden."""
    if isinstance(obj, dict):
        return {k: redact_secrets(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_secrets(v) for v in obj)
    return redact_url(obj)


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


_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:\s'\"]*):[^/?#@\s'\"]*@")


def redact_text(text: str) -> str:
    """Hides the password of every URL inside ``text`` (an error message, a log line)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", str(text))


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
