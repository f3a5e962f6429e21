"""GradES thresholds: numeric, per-group or scale-free ``"auto"`` freezing rules."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from eecontrol.core.grades.patterns import compile_pattern, group_of
from eecontrol.core.grades.targets import Component

AUTO = "auto"


def check_tau(tau: Any) -> float | str | dict[str, float | str]:
    """Validates ``tau``: a number >= 0, ``"auto"``, or a dict of group pattern -> either.

    Raises:
        ValueError: naming ``tau`` and the valid values.
    """

    def one(value: Any, where: str) -> float | str:
        if value == AUTO:
            return AUTO
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"`{where}` must be a number in [0, inf) or 'auto', got {value!r}.")
        return float(value)

    if isinstance(tau, Mapping):
        if not tau:
            raise ValueError("`tau` must be a number in [0, inf), 'auto' or a non-empty dict.")
        out = {}
        for key, value in tau.items():
            compile_pattern(str(key))
            out[str(key)] = one(value, f"tau[{key!r}]")
        return out
    return one(tau, "tau")


def resolve_taus(
    tau: float | str | Mapping[str, float | str], components: Sequence[Component]
) -> list[float | str]:
    """Gives each component its threshold (a number or ``"auto"``).

    Raises:
        ValueError: if a per-group ``tau`` dict leaves a component without a threshold.
    """
    if not isinstance(tau, Mapping):
        return [tau for _ in components]
    out: list[float | str] = []
    for comp in components:
        key = group_of(comp.name, tau.keys())
        if key is None:
            raise ValueError(
                f"`tau` has no group for component {comp.name!r}: keys {list(tau)}; add a "
                f"matching pattern or a 'default' key."
            )
        out.append(tau[key])
    return out


class FreezeRule:
    """Decides, per component, when its statistic is small enough to freeze it.

    A numeric threshold freezes when the (optionally smoothed) statistic is below it, as
    in the paper. ``"auto"`` is scale-free: the component's *reference* is the mean of its
    raw readings in the second half of the grace period (steps ``[grace/2, grace)``), and
    it freezes once its smoothed statistic falls below ``rel_tau`` x reference, i.e. when
    its gradient has shrunk to that fraction of its own post-warm-up size. If no reading
    fell in that window, the first valid smoothed reading after the grace period is the
    reference (no freeze at that reading).

    Args:
        taus: per component, a number or ``"auto"``.
        rel_tau: the fraction of the reference used by ``"auto"``, in (0, 1].
        smoothing: EMA factor in [0, 1) applied to readings before comparing; 0 compares
            the raw reading.
    """

    def __init__(self, taus: Sequence[float | str], rel_tau: float, smoothing: float) -> None:
        self.taus = list(taus)
        self.rel_tau = float(rel_tau)
        self.smoothing = float(smoothing)
        n = len(self.taus)
        self.ema: list[float | None] = [None] * n
        self.ref_sum: list[float] = [0.0] * n
        self.ref_count: list[int] = [0] * n
        self.reference: list[float | None] = [None] * n

    def threshold(self, idx: int) -> float | None:
        """The absolute threshold of component ``idx`` (``None``: auto, not yet known)."""
        tau = self.taus[idx]
        if tau == AUTO:
            ref = self.reference[idx]
            return None if ref is None else self.rel_tau * ref
        return float(tau)

    def update(self, idx: int, value: float | None, step: int, grace_step: int) -> bool:
        """Feeds one reading; returns whether component ``idx`` should freeze now.

        Args:
            idx: the component's index.
            value: the reading (``None``: no reading, no decision, nothing updated).
            step: the optimizer step of the reading.
            grace_step: the first step at which freezing is allowed.
        """
        if value is None:
            return False
        prev = self.ema[idx]
        smoothed = value if prev is None else self.smoothing * prev + (1 - self.smoothing) * value
        self.ema[idx] = smoothed
        if step < grace_step:
            if self.taus[idx] == AUTO and step >= grace_step / 2:
                self.ref_sum[idx] += value
                self.ref_count[idx] += 1
            return False
        if self.taus[idx] == AUTO and self.reference[idx] is None:
            if self.ref_count[idx] > 0:
                self.reference[idx] = self.ref_sum[idx] / self.ref_count[idx]
            else:
                self.reference[idx] = smoothed
                return False
        threshold = self.threshold(idx)
        return threshold is not None and smoothed < threshold

    def smoothed(self, idx: int) -> float | None:
        """The current smoothed statistic of component ``idx``."""
        return self.ema[idx]

    def state_dict(self, names: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
        """Per-component progress by component name (primitives only)."""
        return {
            name: {
                "ema": self.ema[i],
                "ref_sum": self.ref_sum[i],
                "ref_count": self.ref_count[i],
                "reference": self.reference[i],
            }
            for i, name in enumerate(names)
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> None:
        """Restores :meth:`state_dict` output; unknown names are ignored."""
        for i, name in enumerate(names):
            s = state.get(name)
            if s is None:
                continue
            self.ema[i] = s.get("ema")
            self.ref_sum[i] = float(s.get("ref_sum", 0.0))
            self.ref_count[i] = int(s.get("ref_count", 0))
            self.reference[i] = s.get("reference")
