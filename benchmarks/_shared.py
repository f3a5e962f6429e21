"""What several benchmark scripts share: a quiet CPU Trainer and writing a result file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


def quiet_trainer(root: Path, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer writing into ``root``: no logger, checkpoint, progress bar, summary or
    sanity check; ``kwargs`` override or add Trainer arguments."""
    args: dict[str, Any] = {
        "default_root_dir": str(root),
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
    }
    args.update(kwargs)
    return pl.Trainer(**args)


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as indented JSON to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
