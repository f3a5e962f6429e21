"""Where the resume pieces used to live: a re-export shim (the code moved by job, issue 27).

- :mod:`eecontrol.callbacks.checkpoint`: :class:`ResumableCheckpoint` (``last.ckpt`` every
  epoch and on SIGTERM / SIGUSR1 / SIGINT).
- :mod:`eecontrol.callbacks.seeding`: :class:`EpochSeed`, :class:`ResumableDataLoader`,
  :class:`EpochSeededSampler`.
- :mod:`eecontrol.callbacks.csv_logger`: :class:`ResumableCSVLogger`.
- :mod:`eecontrol.app.resume`: ``resume=<run dir>`` (:func:`resume_overrides`,
  :func:`rewrite_argv`), :class:`RunLock`, :func:`check_run_dir`.
- :mod:`eecontrol.util.files`, :mod:`eecontrol.util.redact`, :mod:`eecontrol.util.checks`:
  safe files, redaction, store and study-name checks.

Every name importable from ``eecontrol.resume`` before stays importable from here.
"""

from __future__ import annotations

import os  # noqa: F401  (tests patch ``eecontrol.resume.os.replace``)

from eecontrol.app.resume import (
    LOCK_FILE,
    ResumeError,
    RunLock,
    RunLockedError,
    check_run_dir,
    checkpoint_step,
    describe_checkpoint,
    latest_run,
    names_code,
    resume_overrides,
    rewrite_argv,
)
from eecontrol.callbacks.checkpoint import CheckpointWriteError, ResumableCheckpoint
from eecontrol.callbacks.csv_logger import ResumableCSVLogger
from eecontrol.callbacks.seeding import EpochSeed, EpochSeededSampler, ResumableDataLoader
from eecontrol.util.checks import check_store, check_study_name
from eecontrol.util.files import (
    CHECKPOINT_DIR,
    LAST,
    UnsafeRunDirError,
    append_line,
    is_remote,
    refuse_symlinks,
    replace_atomically,
    safe_dir,
    safe_file,
)
from eecontrol.util.redact import (
    env_secrets,
    redact_hydra_files,
    redact_secrets,
    redact_text,
    redact_url,
)

__all__ = [
    "CHECKPOINT_DIR",
    "LAST",
    "LOCK_FILE",
    "CheckpointWriteError",
    "EpochSeed",
    "EpochSeededSampler",
    "ResumableCSVLogger",
    "ResumableCheckpoint",
    "ResumableDataLoader",
    "ResumeError",
    "RunLock",
    "RunLockedError",
    "UnsafeRunDirError",
    "append_line",
    "check_run_dir",
    "check_store",
    "check_study_name",
    "checkpoint_step",
    "describe_checkpoint",
    "env_secrets",
    "is_remote",
    "latest_run",
    "names_code",
    "redact_hydra_files",
    "redact_secrets",
    "redact_text",
    "redact_url",
    "refuse_symlinks",
    "replace_atomically",
    "resume_overrides",
    "rewrite_argv",
    "safe_dir",
    "safe_file",
]
