"""The ``eecontrol-train`` console script and its Hydra entry point (no Lightning import).

``eecontrol-train --help`` composes the config and prints it without importing torch or
Lightning: the job itself (:func:`eecontrol.app.job.run_job`) is imported when it runs.
The file is named ``train.py`` because Hydra names the job (and its ``train.log``) after
the file of the task function.

Examples:
    eecontrol-train                                  # the default digits recipe
    eecontrol-train experiment=early_dropout trainer.max_epochs=20
    eecontrol-train -m trainer.max_epochs=1,2 hydra/launcher=joblib
    eecontrol-train resume=logs/train/runs/<run>     # continue a killed run in its directory
    eecontrol-train resume=last                      # ... the newest run with a last.ckpt
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

import eecontrol.conf
from eecontrol.app.resume import RunLock, RunLockedError, check_run_dir, rewrite_argv
from eecontrol.extras import check_launchers
from eecontrol.util.files import UnsafeRunDirError
from eecontrol.util.redact import redact_text


def main() -> float | None:
    """The ``eecontrol-train`` console script: ``resume=<run dir>`` is expanded, then Hydra runs.

    ``resume=<run dir>`` (or ``resume=last``) becomes the run's own overrides plus
    ``hydra.run.dir=<run dir>`` and ``ckpt_path=<run dir>/checkpoints/last.ckpt``, so the
    run continues in its directory with the config it started with.
    """
    _redact_log_records()
    root = Path(os.environ.get("EECONTROL_ROOT", ".")) / "logs" / "train" / "runs"
    lock = None
    try:
        sys.argv = [sys.argv[0], *rewrite_argv(sys.argv[1:], root)]
        explicit = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("hydra.run.dir=")]
        if explicit and Path(explicit[-1]).is_dir() and "-m" not in sys.argv:
            # an existing run directory (a resume): no link in it, and one writer, checked
            # before Hydra opens train.log and rewrites .hydra/ there
            check_run_dir(Path(explicit[-1]))
            if _launch_rank() == 0:  # DDP children get hydra.run.dir of rank 0's run
                lock = RunLock(explicit[-1])
                lock.acquire()
    except (ValueError, FileNotFoundError, UnsafeRunDirError, RunLockedError) as err:
        print(f"eecontrol-train: {redact_text(str(err))}", file=sys.stderr)
        raise SystemExit(1 if isinstance(err, RunLockedError) else 2) from None
    missing = check_launchers(sys.argv[1:], Path(eecontrol.conf.__file__).parent)
    if missing:  # before Hydra, whose own message ("Could not find ...") names no extra
        if lock is not None:
            lock.release()
        print(f"eecontrol-train: {missing}", file=sys.stderr)
        raise SystemExit(2)
    try:
        return hydra_main()
    finally:
        if lock is not None:
            lock.release()


def _redact_log_records() -> None:
    """Every log record (Hydra's launchers print each job's overrides, Lightning, ours)
    leaves credentials out: URL passwords and ``password=`` parameters become ``***``,
    on the console and in ``train.log`` alike."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "eecontrol_redacts", False):
        return

    def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: left to logging's own error handling
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    redacting.eecontrol_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)


def _launch_rank() -> int:
    """This process's rank as launchers set it before Lightning runs (0 when none is set)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        value = os.environ.get(var, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


@hydra.main(version_base="1.3", config_path="pkg://eecontrol.conf", config_name="train.yaml")
def hydra_main(cfg: DictConfig) -> float | None:
    """Runs one Hydra job (:func:`eecontrol.app.job.run_job`); returns the optimised metric."""
    from eecontrol.app.job import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
