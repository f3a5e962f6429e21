"""What several benchmark scripts share: a quiet CPU Trainer, the options of a run (seed,
threads, result file) and writing a result file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from eecontrol.testing import quiet_trainer_kwargs


def quiet_trainer(root: Path, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer writing into ``root``: no logger, checkpoint, progress bar, summary or
    sanity check; ``kwargs`` override or add Trainer arguments."""
    args: dict[str, Any] = {**quiet_trainer_kwargs(root), "callbacks": callbacks}
    args.update(kwargs)
    return pl.Trainer(**args)


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as indented JSON to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def add_run_options(
    parser: argparse.ArgumentParser, out: str, threads: int = 1, seed: bool = False
) -> None:
    """Adds ``--threads`` (torch threads), ``--out`` (the result file) and, with ``seed``,
    ``--seed`` (default 0)."""
    if seed:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--out", type=Path, default=Path(out))


def parse_run_options(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parses the command line and sets torch's thread count from ``--threads``."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def finish(out: Path, result: dict[str, Any], shown: Any) -> None:
    """Writes ``result`` to ``out`` and prints ``shown`` (its summary) as indented JSON."""
    write_json(out, result)
    print(json.dumps(shown, indent=1))
