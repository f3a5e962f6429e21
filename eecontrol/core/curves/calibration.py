"""The learned table of forecast scores that calibrates :func:`~eecontrol.core.curves.forecast`.

The shipped table (``calibration.json`` beside this module) was learned on the recorded
sweeps in ``benchmarks/data`` by ``python benchmarks/curves_fit.py --write-calibration``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
QUANTILE_LEVELS = tuple(float(q) for q in np.linspace(0.0, 1.0, 101))


@dataclass(frozen=True)
class Calibration:
    """The learned distribution of the forecast score ``S = (y - center) / scale``.

    Args:
        fractions: the fractions of the curve seen (position / target position) at which
            scores were collected, increasing.
        levels: the quantile levels, increasing from 0 to 1.
        scores: per fraction, the score's quantile at each level.
        source: what the table was learned on.
    """

    fractions: tuple[float, ...]
    levels: tuple[float, ...]
    scores: tuple[tuple[float, ...], ...]
    source: str = ""

    @classmethod
    def from_scores(
        cls,
        fractions: Sequence[float],
        scores: Sequence[Sequence[float]],
        source: str = "",
    ) -> Calibration:
        """Builds the table from raw scores collected at each fraction."""
        table = []
        for s in scores:
            arr = np.asarray(s, dtype=float)
            arr = arr[np.isfinite(arr)]
            if len(arr) < 5:
                raise ValueError(f"need at least 5 finite scores per fraction, got {len(arr)}.")
            table.append(tuple(float(v) for v in np.quantile(arr, QUANTILE_LEVELS)))
        return cls(tuple(float(f) for f in fractions), QUANTILE_LEVELS, tuple(table), source)

    def to_dict(self) -> dict[str, Any]:
        """The table as JSON-safe primitives."""
        return {
            "source": self.source,
            "fractions": list(self.fractions),
            "levels": list(self.levels),
            "scores": [list(s) for s in self.scores],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Reads :meth:`to_dict` output."""
        return cls(
            tuple(float(f) for f in data["fractions"]),
            tuple(float(q) for q in data["levels"]),
            tuple(tuple(float(v) for v in s) for s in data["scores"]),
            str(data.get("source", "")),
        )

    def table(self, fraction: np.ndarray) -> np.ndarray:
        """The score quantiles (len(fraction) x levels), interpolated between fractions."""
        f = np.clip(np.asarray(fraction, dtype=float), self.fractions[0], self.fractions[-1])
        s = np.asarray(self.scores)
        idx = np.clip(np.searchsorted(self.fractions, f, side="right") - 1, 0, len(s) - 1)
        nxt = np.minimum(idx + 1, len(s) - 1)
        fr = np.asarray(self.fractions)
        gap = np.where(nxt > idx, fr[nxt] - fr[idx], 1.0)
        w = np.clip((f - fr[idx]) / gap, 0.0, 1.0)[:, None]
        return (1 - w) * s[idx] + w * s[nxt]


@cache
def default_calibration() -> Calibration:
    """The calibration shipped with eecontrol (learned on the recorded real sweeps)."""
    return Calibration.from_dict(json.loads(CALIBRATION_FILE.read_text()))
