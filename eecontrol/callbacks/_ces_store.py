"""Where ConformalEarlyStopping keeps its candidates, across ranks and resumed runs.

The files themselves (layout, saving, reading) are :mod:`eecontrol.core.conformal.candidates`;
this module adds what needs the Trainer: the run directory, rank zero writing while every
rank gathers the weights, and the candidates of a run resumed into a new directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from eecontrol.callbacks._control import run_dir
from eecontrol.core.conformal.candidates import candidate_path, save_candidate


def resolve_dir(trainer: pl.Trainer, configured: str | None) -> Path:
    """The candidates directory: ``candidates_dir``, else ``<run dir>/ces``.

    Raises:
        ValueError: it exists and is a file.
    """
    directory = Path(configured) if configured else run_dir(trainer) / "ces"
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"ConformalEarlyStopping: `candidates_dir` {str(directory)!r} is an existing "
            "file; it must be a directory (or not exist yet)."
        )
    return directory


def check_stored(trainer: pl.Trainer, directory: Path, paths: list[str], own_dir: bool) -> None:
    """Makes sure every stored candidate of a resumed run is in ``directory``.

    Args:
        trainer: the Trainer at fit start.
        directory: the candidates directory.
        paths: the stored candidates (relative to ``directory``).
        own_dir: ``candidates_dir`` was given, so nothing is copied from the checkpoint's run.

    Raises:
        ValueError: candidates are missing (naming the first).
    """
    missing = [p for p in paths if not candidate_path(p, directory).exists()]
    if missing and not own_dir:
        missing = copy_from_checkpoint_run(trainer, directory, missing)
    if missing:
        raise ValueError(
            f"ConformalEarlyStopping: {len(missing)} stored candidate checkpoints of the "
            f"resumed run are missing (first: {candidate_path(missing[0], directory)}); "
            "without them the CES selection is incomplete. Restore them or start a new run."
        )


def copy_from_checkpoint_run(trainer: pl.Trainer, directory: Path, missing: list[str]) -> list[str]:
    """Copies the candidates of a run resumed into a new run directory from the old one.

    ``ckpt_path=<old run>/checkpoints/last.ckpt`` with a new run directory: the stored
    (relative) candidates live in ``<old run>/ces``; they are copied, so the new run
    directory holds every candidate it selects from. Returns the paths still missing.
    """
    ckpt = getattr(trainer, "ckpt_path", None)
    if not ckpt or "://" in str(ckpt):
        return missing
    source = Path(ckpt).resolve().parent.parent / "ces"
    if source == directory.resolve() or not all(
        candidate_path(p, source).is_file() for p in missing
    ):
        return missing
    if trainer.is_global_zero:
        for p in missing:
            target = candidate_path(p, directory)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(candidate_path(p, source), target)
        rank_zero_info(
            f"ConformalEarlyStopping: copied {len(missing)} candidate(s) of the resumed run "
            f"from {source} into {directory}."
        )
    trainer.strategy.barrier("ces_copy_candidates")
    return [p for p in missing if not candidate_path(p, directory).exists()]


def store_weights(trainer: pl.Trainer, path: Path) -> None:
    """Writes the current weights as a candidate file (rank zero; every rank gathers them).

    Under FSDP gathering the full state dict is a collective, so every rank calls this.
    """
    full = trainer.strategy.lightning_module_state_dict()
    if trainer.is_global_zero:
        save_candidate(path, full, int(trainer.current_epoch), int(trainer.global_step))
