"""``decisions.jsonl``: the run's decision journal, rewritten from the callbacks' state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from eecontrol.callbacks._trainer import run_dir
from eecontrol.core.decision import DECISIONS_FILE, Decision
from eecontrol.util.files import safe_file


def journal_loses(path: Path, decisions: list[Decision], trainer: pl.Trainer) -> bool:
    """Whether rewriting ``path`` from ``decisions`` drops a decision made before the checkpoint."""
    loaded = getattr(trainer._checkpoint_connector, "_loaded_checkpoint", None) or {}
    step = loaded.get("global_step")
    kept = {json.dumps(d.to_dict()) for d in decisions}
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip() or line in kept:
            continue
        try:
            made_at = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            return True  # an unreadable line: keep the file
        if step is None or made_at < int(step):
            return True
    return False


def write_journal(trainer: pl.Trainer, decisions: list[Decision]) -> None:
    """Rewrites ``decisions.jsonl`` from ``decisions`` (the callbacks' state; rank zero, once per fit).

    The file is a view of the callbacks' state: after a resume it holds exactly the
    decisions made up to the checkpoint (decisions written after it by a killed process
    are dropped, since the resumed run makes them again). A file left by another fit in
    the same directory is kept as ``decisions.jsonl.N`` rather than overwritten, and so is
    a journal whose decisions up to the checkpoint are not in the restored state (e.g. a
    callback whose identity changed between the runs). A symlink there is replaced, never
    followed.
    """
    if not trainer.is_global_zero:
        return
    path = safe_file(run_dir(trainer) / DECISIONS_FILE)
    resuming = trainer.ckpt_path is not None
    if (
        path.exists()
        and path.stat().st_size > 0
        and (
            (not resuming and not decisions)
            or (resuming and journal_loses(path, decisions, trainer))
        )
    ):
        n = 1
        while path.with_name(f"{DECISIONS_FILE}.{n}").exists():
            n += 1
        backup = path.with_name(f"{DECISIONS_FILE}.{n}")
        path.rename(backup)
        rank_zero_info(f"eecontrol: kept the previous fit's decisions as {backup}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = safe_file(path.with_name(path.name + ".tmp"))
    with tmp.open("w") as f:
        for d in decisions:
            f.write(json.dumps(d.to_dict()) + "\n")
    os.replace(tmp, path)
