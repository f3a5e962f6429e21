"""The results of :class:`~eecontrol.callbacks.conformal.ConformalEarlyStopping`: the record
of its stored candidates, the predictor over them, and their checkpoint state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eecontrol.core.conformal.predictor import ConformalPredictor, compare_methods


class CandidateResults:
    """What the callback's stored candidates give: ``record``, ``predictor``, ``evaluate``
    and the candidates' part of the checkpoint state (a mixin of the callback)."""

    task: str
    epochs: list[int]
    steps: list[int]
    paths: list[str]
    outputs: list[Tensor]
    targets: Tensor | None
    aps_seed: int
    randomized: bool
    conditional: bool
    quantiles: Any
    _dir: Path | None
    _start: Any
    _resumed_start: Any

    def evaluate(self, model: nn.Module, x: Any, y: Tensor, alpha: float) -> dict[str, float]:
        """CES against the naive baseline on ``(x, y)``: see :func:`compare_methods`."""
        return compare_methods(model, self.record(), x, y, alpha)

    def record(self) -> dict[str, Any]:
        """Everything a :class:`ConformalPredictor` needs besides the model (weights_only-safe).

        ``paths`` are relative to the candidates directory (``root``, dropped in the
        ``holdout.pt`` file, which lives there).
        """
        if not self.outputs:
            raise ValueError("ConformalEarlyStopping has stored no candidate yet.")
        return {
            "task": self.task,
            "epochs": list(self.epochs),
            "steps": list(self.steps),
            "paths": list(self.paths),
            "root": None if self._dir is None else str(self._dir.resolve()),
            "outputs": torch.stack(self.outputs),
            "targets": self.targets,
            "aps_seed": self.aps_seed,
            "randomized": self.randomized,
            "conditional": self.conditional,
            "quantiles": list(self.quantiles),
        }

    def predictor(self, model: nn.Module, method: str = "ces") -> ConformalPredictor:
        """A predictor over this run's candidates, using ``model`` as the architecture."""
        return ConformalPredictor(model, self.record(), method=method)

    def _progress_state(self) -> dict[str, Any]:
        return {
            "epochs": list(self.epochs),
            "steps": list(self.steps),
            "paths": list(self.paths),
            "outputs": torch.stack(self.outputs) if self.outputs else None,
            "targets": self.targets,
            "start": self._start,
        }

    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self.epochs = list(state.get("epochs", []))
        self.steps = list(state.get("steps", []))
        self.paths = list(state.get("paths", []))
        outputs = state.get("outputs")
        self.outputs = list(outputs.unbind(0)) if outputs is not None else []
        self.targets = state.get("targets")
        # the resolved warm-up in storage units ("start_epoch" in older checkpoints)
        self._resumed_start = state.get("start", state.get("start_epoch"))
        if not len(self.epochs) == len(self.paths) == len(self.outputs):
            raise ValueError(
                "ConformalEarlyStopping: corrupted state: "
                f"{len(self.epochs)} epochs, {len(self.paths)} paths, {len(self.outputs)} outputs."
            )
