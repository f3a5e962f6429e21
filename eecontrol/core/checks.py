"""Argument checks shared by the core, the callbacks and the sweep tools.

Every check raises a ``ValueError`` that names the argument as the user writes it, the
value given and the valid range or choices. Lightning-free, so any layer may import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Raises a ``ValueError`` naming ``name``, its value and the valid range.

    Args:
        name: the argument's name as the user writes it.
        value: the value given.
        low: the lower bound, or None.
        high: the upper bound, or None.
        low_inclusive: whether ``low`` itself is valid.
        high_inclusive: whether ``high`` itself is valid.
        integer: whether the value must be an integer.
    """
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    rng = f"{'[' if low_inclusive and low is not None else '('}{lo}, {hi}{']' if high_inclusive and high is not None else ')'}"
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"`{name}` must be {kind} in {rng}, got {value!r}.")
    if integer and not float(value).is_integer():
        raise ValueError(f"`{name}` must be {kind} in {rng}, got {value!r}.")
    if not math.isfinite(float(value)):
        raise ValueError(
            f"`{name}` must be a finite {kind[2:] if integer else 'number'} in {rng}, got {value!r}."
        )
    bad = (low is not None and (value < low or (value == low and not low_inclusive))) or (
        high is not None and (value > high or (value == high and not high_inclusive))
    )
    if bad:
        raise ValueError(f"`{name}` must be {kind} in {rng}, got {value!r}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Raises a ``ValueError`` naming ``name`` and the valid choices; returns the value."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value


def check_probability(name: str, value: float) -> None:
    """Raises a ``ValueError`` naming ``name`` unless ``value`` is a number in (0, 1)."""
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not (ok and math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"`{name}` must be a number in (0.0, 1.0), got {value!r}.")


def check_rule_args(
    probabilities: Mapping[str, float],
    *,
    min_delta: float | None = None,
    none_ok: bool = True,
    min_points: Any = None,
    least_points: int | None = None,
) -> None:
    """Checks the options the learning-curve stopping rules and their pruner share.

    Args:
        probabilities: ``{name: value}`` of stop probabilities and band masses, each in (0, 1).
        min_delta: the improvement that counts, a number >= 0 (or None where ``none_ok``).
        none_ok: whether ``min_delta`` may be None (then the message says so).
        min_points: the warm-up in points, an integer >= ``least_points``.
        least_points: the smallest valid ``min_points``; None: ``min_points`` is not checked.

    Raises:
        ValueError: naming the first bad argument, its value and the valid range.
    """
    for name, value in probabilities.items():
        check_probability(name, value)
    if not (none_ok and min_delta is None):
        ok = not isinstance(min_delta, bool) and isinstance(min_delta, int | float)
        if not (ok and math.isfinite(min_delta) and min_delta >= 0):  # type: ignore[arg-type]
            either = " or None" if none_ok else ""
            raise ValueError(
                f"`min_delta` must be a number in [0.0, inf){either}, got {min_delta!r}."
            )
    if least_points is not None:
        check_range("min_points", min_points, low=least_points, integer=True)


def check_bounds(bounds: Sequence[float] | None) -> tuple[float, float] | None:
    """Validates a metric range ``(low, high)``; returns it as floats (or None).

    Raises:
        ValueError: unless ``bounds`` is None or two numbers with ``low < high``.
    """
    if bounds is None:
        return None
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"`bounds` must be [low, high] with low < high, got {bounds!r}.") from None
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ValueError(f"`bounds` must be [low, high] with low < high, got {bounds!r}.")
    return lo, hi


def check_bool(name: str, value: Any, *, none_ok: bool = False) -> bool | None:
    """Raises a ``ValueError`` naming ``name`` unless ``value`` is a real ``bool``.

    Strings such as ``"no"``, ``"false"`` or ``"0"`` (a quoted YAML value, a command-line
    value read as a string) are refused rather than read as true by ``bool()``; so are
    numbers.

    Args:
        name: the option's name as the user writes it.
        value: the value given.
        none_ok: whether None is valid too.

    Returns:
        The value.
    """
    if isinstance(value, bool) or (none_ok and value is None):
        return value
    valid = "true or false" + (" (or null)" if none_ok else "")
    raise ValueError(f"`{name}` must be {valid}, got {value!r} (a {type(value).__name__}).")
