"""The files of a CES run: candidate weights, the hold-out record and its summary.

Layout of a candidates directory (``<run dir>/ces`` by default): one weights-only
checkpoint per candidate (``{"state_dict", "epoch", "step"}``), ``holdout.pt`` (the
record :class:`~eecontrol.core.conformal.predictor.ConformalPredictor` needs besides the
model, with candidate paths relative to the directory, so a moved run still loads) and
``candidates.json`` (epoch, step, path and hold-out loss per candidate, for people).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

HOLDOUT_FILE = "holdout.pt"
SUMMARY_FILE = "candidates.json"


def candidate_path(path: str, base: Path | None) -> Path:
    """A stored candidate's file: relative names are resolved against the candidates dir."""
    p = Path(path)
    if p.is_absolute() or base is None:
        return p
    return base / p


def save_candidate(path: Path, state: Mapping[str, Tensor], epoch: int, step: int) -> None:
    """Writes one candidate's weights (on the CPU) with the epoch and step it was taken at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().cpu() for k, v in state.items()}
    torch.save({"state_dict": cpu, "epoch": epoch, "step": step}, path)


def write_run_files(directory: Path, record: dict[str, Any], losses: Sequence[float]) -> None:
    """Writes ``holdout.pt`` (the record without its absolute ``root``) and ``candidates.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {k: v for k, v in record.items() if k != "root"}  # a moved run must still load
    torch.save(record, directory / HOLDOUT_FILE)
    rows = zip(record["epochs"], record["steps"], record["paths"], losses)
    (directory / SUMMARY_FILE).write_text(
        json.dumps(
            [{"epoch": e, "step": s, "path": p, "holdout_loss": loss} for e, s, p, loss in rows],
            indent=1,
        )
    )


def read_record(run: Path) -> tuple[dict[str, Any], Path]:
    """Loads ``<run>/ces/holdout.pt`` (or ``<run>/holdout.pt``) and the directory holding it.

    Raises:
        ValueError: the file cannot be read.
        FileNotFoundError: there is none.
    """
    for path in (run / "ces" / HOLDOUT_FILE, run / HOLDOUT_FILE):
        if path.exists():
            try:
                record = torch.load(path, weights_only=True)
            except Exception as err:
                raise ValueError(
                    f"cannot read the CES record {path} ({type(err).__name__}: {err}); it may "
                    "be truncated or not written by ConformalEarlyStopping."
                ) from err
            return record, path.parent
    raise FileNotFoundError(
        f"no {HOLDOUT_FILE} under {run} or {run / 'ces'}: was the run fitted with "
        "ConformalEarlyStopping?"
    )


def load_candidate_states(paths: Sequence[str], root: Path | None) -> list[dict[str, Tensor]]:
    """Every candidate's state dict (on the CPU), in the record's order.

    Raises:
        FileNotFoundError: a candidate file is missing.
        ValueError: a candidate file cannot be read.
    """
    states = []
    for name in paths:
        path = candidate_path(name, root)
        if not path.exists():
            raise FileNotFoundError(
                f"CES candidate file {path} is missing (the record lists "
                f"{len(paths)} candidates); restore it or refit."
            )
        try:
            blob = torch.load(path, weights_only=True, map_location="cpu")
            states.append(blob["state_dict"])
        except Exception as err:
            raise ValueError(
                f"cannot read CES candidate file {path} ({type(err).__name__}: {err}); "
                "it may be truncated or corrupted. Restore it or refit."
            ) from err
    return states
