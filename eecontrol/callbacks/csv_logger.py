"""``ResumableCSVLogger``: a CSV logger that continues ``metrics.csv`` after a resume."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from eecontrol.util.files import refuse_symlinks


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
