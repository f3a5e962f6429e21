"""What a stopping rule returns (:class:`RuleResult`) and how a probability rule decides.

The rules themselves are in :mod:`~eecontrol.core.curves.rules` (forecast rules) and
:mod:`~eecontrol.core.curves.cross_run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CURVE_POINTS = 25
"""Positions of the predicted curve a rule returns (from the last point to the horizon)."""
DECISION_EVERY = 5
"""Every 5th of them (5 positions) is where the convergence rule asks for an improvement."""


@dataclass(frozen=True)
class RuleResult:
    """The outcome of a stopping rule, with its evidence.

    Args:
        decision: ``stop``, ``continue`` or ``no_decision``.
        reason: one sentence saying why.
        rule: ``convergence``, ``sweep``, ``in_run`` (the ensemble rule) or ``cross_run``.
        probability: the estimated probability of improving (convergence / in-run: of
            beating the run's best by ``min_delta`` before the horizon; sweep: of the
            value at the horizon beating the sweep's best; cross-run: of the final result
            beating the best finished run).
        predicted_final: the predicted value at the horizon (caller's units).
        lower: lower end of the band at the horizon.
        upper: upper end of the band at the horizon.
        best: the value to beat.
        n_points: points of the curve used.
        min_delta: the improvement that counted (convergence rule), or None.
        forecaster: the forecaster that decided (forecast rules), or None.
        curve: the predicted curve the rule decided with, as primitives: ``x``, ``mean``,
            ``lower``, ``upper`` (lists, from just past the last point to the horizon),
            ``band`` and ``forecaster``; None when there was no forecast. Its last point is
            ``predicted_final``, ``lower`` and ``upper``.
    """

    decision: str
    reason: str
    rule: str
    probability: float | None = None
    predicted_final: float | None = None
    lower: float | None = None
    upper: float | None = None
    best: float | None = None
    n_points: int = 0
    min_delta: float | None = None
    forecaster: str | None = None
    curve: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def stop(self) -> bool:
        """Whether the rule says stop."""
        return self.decision == "stop"

    def evidence(self) -> dict[str, float | int | str | None]:
        """The numbers of this result as primitives, prefixed by the rule's name."""
        return {
            f"{self.rule}_{k}": v
            for k, v in (
                ("decision", self.decision),
                ("reason", self.reason),
                ("probability", self.probability),
                ("predicted_final", self.predicted_final),
                ("lower", self.lower),
                ("upper", self.upper),
                ("best", self.best),
                ("n_points", self.n_points),
                ("min_delta", self.min_delta),
                ("forecaster", self.forecaster),
            )
            if k not in ("min_delta", "forecaster") or v is not None
        }


def _curve_record(
    grid: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray, band: float, name: str
) -> dict[str, Any]:
    return {
        "x": [float(v) for v in grid],
        "mean": [float(v) for v in mean],
        "lower": [float(v) for v in np.minimum(lo, hi)],
        "upper": [float(v) for v in np.maximum(lo, hi)],
        "band": float(band),
        "forecaster": name,
    }


def decide(
    common: dict[str, Any],
    limit: float,
    name: str,
    event: str,
    label: str,
    explained: str,
    keep_reason: str | None = None,
) -> RuleResult:
    """The verdict of a probability rule from its evidence.

    Args:
        common: the :class:`RuleResult` fields but the decision and the reason (with
            ``probability``).
        limit: stop when the probability is below this.
        name: the limit's option name (``threshold``, ``delta``).
        event: the probability, spelled out for the stop reason (``P(beating ...)``).
        label: the probability, short, for the continue reason (``P(improvement)``).
        explained: the prediction behind a stop, appended to its reason.
        keep_reason: a reason to continue whatever the probability (the run leads, or
            just set its best), or None.

    Returns:
        ``continue`` with ``keep_reason``, else ``stop`` below ``limit``, else ``continue``.
    """
    prob = float(common["probability"])
    if keep_reason is not None:
        return RuleResult("continue", keep_reason, **common)
    if prob < limit:
        return RuleResult("stop", f"{event} = {prob:.3f} < {name} {limit:g}; {explained}", **common)
    return RuleResult("continue", f"{label} = {prob:.3f} >= {limit:g}", **common)
