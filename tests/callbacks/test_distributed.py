"""ddp_spawn workers end with a barrier and destroy_process_group() (no abort at exit)."""

from __future__ import annotations

import json
import multiprocessing.util
import os

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from eecontrol.callbacks import _distributed
from tests.callbacks.test_control import StopAtEpoch
from tests.conftest import digits_data, digits_model, fit_on_two_processes, make_trainer


def _after_release(path: str) -> None:
    """Runs at worker exit after eecontrol's release (lower exit priority)."""
    with open(path, "w") as f:
        json.dump({"initialized_at_exit": torch.distributed.is_initialized()}, f)


class _Probe(Callback):
    """Records, in each worker, whether eecontrol registered the release at teardown."""

    def __init__(self, root: str) -> None:
        self.root = root

    def teardown(self, trainer, pl_module, stage) -> None:
        rank = trainer.global_rank
        with open(f"{self.root}/teardown{rank}.json", "w") as f:
            json.dump(
                {
                    "registered": _distributed._registered_pid == os.getpid(),
                    "initialized": torch.distributed.is_initialized(),
                },
                f,
            )
        multiprocessing.util.Finalize(
            None, _after_release, args=(f"{self.root}/exit{rank}.json",), exitpriority=1
        )


@pytest.mark.timeout(180)
def test_ddp_spawn_workers_destroy_the_process_group_at_exit(tmp_path):
    callbacks = [StopAtEpoch(epoch=5), _Probe(str(tmp_path))]
    fit_on_two_processes(
        tmp_path, callbacks, max_epochs=2, limit_train_batches=2, limit_val_batches=1
    )
    for rank in (0, 1):
        at_teardown = json.loads((tmp_path / f"teardown{rank}.json").read_text())
        # the group is still alive for Lightning's own teardown and result collection ...
        assert at_teardown == {"registered": True, "initialized": True}, (rank, at_teardown)
        # ... and gone when the worker exits
        at_exit = json.loads((tmp_path / f"exit{rank}.json").read_text())
        assert at_exit == {"initialized_at_exit": False}, (rank, at_exit)


def test_single_process_runs_register_nothing(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.callbacks.append(StopAtEpoch(epoch=5))
    trainer.fit(digits_model(), datamodule=digits_data())
    assert not torch.distributed.is_initialized()
    assert _distributed.release_process_group_at_worker_exit(trainer) is False
    assert _distributed._registered_pid is None
