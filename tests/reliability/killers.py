"""Callbacks that SIGKILL ``eecontrol-train`` at a precise point (no cleanup, like a lost machine).

Planted with ``+callbacks.kill._target_=tests.reliability.killers.KillAfterSave`` (the test
puts the repository on ``PYTHONPATH``); where to kill comes from the environment variable
``EECONTROL_TEST_KILL``, so the reference run, the killed run and the resumed run have the
same callbacks and only the killed one dies:

- ``epoch:N``: right after ``last.ckpt`` of epoch N (0-based) is written, before Lightning
  logs that epoch's training metrics (the ``Checkpoint`` subclass runs after
  ``ResumableCheckpoint``: Lightning orders checkpoint callbacks last, in their order);
- ``test``: when testing starts (after the last epoch);
- ``report``: when the run's report is written (after testing; the report reads the CSV,
  which is wrapped here by patching ``report_run`` from a ``Checkpoint`` hook).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint

ENV = "EECONTROL_TEST_KILL"


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterSave(Checkpoint):
    """SIGKILLs the process at the point named by ``$EECONTROL_TEST_KILL`` (see the module)."""

    def __init__(self) -> None:
        self.where = os.environ.get(ENV, "")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.where == f"epoch:{trainer.current_epoch}":
            _die()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.where == "test":
            _die()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.where == "report":
            import eecontrol.app.job as train

            def killed(*args: Any, **kwargs: Any) -> Any:
                _die()

            train.report_run = killed  # the kill comes while the report is being written

    def state_dict(self) -> dict[str, Any]:
        return {}
