"""A clean end for ``ddp_spawn`` / ``ddp_fork`` worker processes.

A worker started by Lightning's multiprocessing launcher that exits with its process group
still alive can abort on CPU/gloo ("terminate called without an active exception", SIGABRT,
about one run in three on a 2-core machine): the group's C++ threads are destroyed while
the peer may still be talking to them. Ending every worker with a barrier and then
``destroy_process_group()`` removes the abort (20 of 20 runs in a measurement that
patched Lightning's launcher; see ``docs/ddp.md``).

eecontrol does this from its own code: :class:`~eecontrol.callbacks._control.ControlCallback`
calls :func:`release_process_group_at_worker_exit` in its ``teardown`` hook, which Lightning
calls only when a stage ends normally. The release itself runs at the very end of the
worker process (a ``multiprocessing`` exit finalizer), after Lightning has collected the
worker's results, so nothing of Lightning's own teardown runs without a process group.
Single-process runs and ``strategy="ddp"`` (whose rank 0 is the user's own process,
which may go on to call ``trainer.test``) are left alone.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)

_registered_pid: int | None = None


def _in_spawned_worker(trainer: pl.Trainer) -> bool:
    """Whether this process is a worker of Lightning's multiprocessing launcher with a group."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    return (
        isinstance(launcher, _MultiProcessingLauncher)
        and multiprocessing.parent_process() is not None
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _release() -> None:
    """Waits for every rank, then destroys the default process group (worker exit)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    try:
        if torch.distributed.get_backend() == "nccl" and torch.cuda.is_available():
            torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        else:
            torch.distributed.barrier()
    except Exception as err:  # a peer that died: nothing to wait for
        log.debug("eecontrol: exit barrier failed (%s); destroying the group anyway", err)
    try:
        torch.distributed.destroy_process_group()
    except Exception as err:
        log.debug("eecontrol: destroy_process_group failed at worker exit: %s", err)


def release_process_group_at_worker_exit(trainer: pl.Trainer) -> bool:
    """Arranges a barrier and ``destroy_process_group()`` at the end of a spawned worker.

    Does nothing outside a ``ddp_spawn``/``ddp_fork`` worker with an initialised group of
    more than one rank, and registers at most once per process.

    Args:
        trainer: the trainer whose stage just ended normally.

    Returns:
        Whether the release was registered (now or earlier) for this process.
    """
    global _registered_pid
    if not _in_spawned_worker(trainer):
        return False
    pid = multiprocessing.current_process().pid
    if _registered_pid != pid:
        multiprocessing.util.Finalize(None, _release, exitpriority=100)
        _registered_pid = pid
    return True
