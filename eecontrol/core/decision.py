"""The decision record every eecontrol callback writes (framework-free: no Lightning).

A :class:`Decision` is one action (stop, freeze, set a rate, select a checkpoint) with the
numbers that justify it; ``decisions.jsonl`` holds one per line. Also here: what a
metric's name says about its direction (:func:`lower_is_better`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

DECISIONS_FILE = "decisions.jsonl"

Evidence = dict[str, float | int | str | bool | None]


@dataclass(frozen=True)
class Decision:
    """One action a callback took, with the numbers that justify it.

    Args:
        step: ``trainer.global_step`` (optimizer steps done) when the decision was made.
        epoch: ``trainer.current_epoch`` when the decision was made.
        callback: the deciding callback's class name (what tables, plots and W&B show).
        action: a short verb, e.g. ``"stop"``, ``"freeze"``, ``"set_rate"``.
        reason: one human sentence saying why.
        evidence: primitives only (numbers, strings, booleans) that justify the action.
        key: the deciding instance's ``state_key`` (tells two instances of a class apart).
    """

    step: int
    epoch: int
    callback: str
    action: str
    reason: str
    evidence: Evidence = field(default_factory=dict)
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON- and ``weights_only``-safe dict of primitives."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """Builds a decision from :meth:`to_dict` output.

        Raises:
            ValueError: if a field is missing.
        """
        missing = [k for k in ("step", "epoch", "callback", "action", "reason") if k not in data]
        if missing:
            raise ValueError(f"decision record is missing fields {missing}: {dict(data)!r}")
        return cls(
            step=int(data["step"]),
            epoch=int(data["epoch"]),
            callback=str(data["callback"]),
            action=str(data["action"]),
            reason=str(data["reason"]),
            evidence=dict(data.get("evidence") or {}),
            key=str(data.get("key", "")),
        )


def clean_evidence(evidence: Mapping[str, Any] | None) -> Evidence:
    """Converts evidence values to JSON-safe primitives (tensors and numpy scalars included)."""
    out: Evidence = {}
    for key, value in (evidence or {}).items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[str(key)] = value
        elif isinstance(value, int):
            out[str(key)] = int(value)
        elif isinstance(value, float):
            out[str(key)] = float(value) if math.isfinite(value) else str(value)
        else:
            out[str(key)] = str(value)
    return out


_LOWER_IS_BETTER = ("loss", "error", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl")
_HIGHER_IS_BETTER = ("acc", "accuracy", "f1", "auc", "auroc", "precision", "recall", "r2", "iou")


def lower_is_better(metric: str) -> bool | None:
    """What a metric's name says about its direction: True (a loss), False (an accuracy), None.

    The name is split on ``/``, ``_``, ``-`` and ``.``; ``val/loss``, ``val_loss`` and
    ``train/mse`` are losses, ``val/acc`` and ``test_f1`` are scores.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", metric.lower()) if w]
    if any(w in _LOWER_IS_BETTER for w in words):
        return True
    if any(w in _HIGHER_IS_BETTER for w in words):
        return False
    return None
