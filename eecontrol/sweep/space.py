"""Search spaces from Hydra's override grammar, read as the official Optuna sweeper reads them.

``hydra.sweeper.params`` (and sweep overrides on the command line) become Optuna
distributions:

* ``choice(a, b, c)`` or ``a,b,c``: a categorical distribution;
* ``range(start, stop, step)``: an integer (or float, if any bound is a float) distribution
  with that step; ``shuffle(range(...))`` is categorical. ``stop`` is excluded, as in
  Python and Hydra's basic sweeper (the official Optuna sweeper includes it): a sweep
  moved between the basic and this sweeper keeps its values. When ``stop`` lies on the
  step grid (the two readings differ) a :class:`RangeStopWarning` says so;
* ``interval(low, high)``: a uniform float (integer, if both bounds are integers)
  distribution; ``tag(log, interval(low, high))`` samples on a log scale;
* anything else is a fixed value passed to every job unchanged.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_PLAIN = re.compile(r"^[A-Za-z0-9_.+\-/:]+$")


class RangeStopWarning(UserWarning):
    """``range(start, stop)`` excludes ``stop`` here; the official Optuna sweeper includes it."""


def _warn_range_stop(key: str, start: Any, stop: Any, step: Any, last: Any) -> None:
    """Warns when ``stop`` is a value the official plugin would sample (it lies on the grid)."""
    k = (float(stop) - float(start)) / float(step)
    if abs(k - round(k)) > 1e-9:
        return  # stop is off the grid: both readings give the same values
    warnings.warn(
        f"`{key}`: range({start}, {stop}, {step}) excludes {stop} (the last value is {last}), "
        f"as Python and Hydra's basic sweeper do; the official hydra-optuna-sweeper includes "
        f"it. To include it write range({start}, {stop} + {step}, {step}) (e.g. "
        f"range({start}, {_next(stop, step)}, {step})).",
        RangeStopWarning,
        stacklevel=3,
    )


def _next(stop: Any, step: Any) -> Any:
    value = stop + step
    return round(value, 12) if isinstance(value, float) else value


@dataclass
class SearchSpace:
    """A parsed search space.

    Args:
        distributions: parameter name -> Optuna distribution, in the order written.
        fixed: parameter name -> value passed to every job.
        passthrough: overrides passed to every job as written (deletions ``~key``).
    """

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    passthrough: list[str] = field(default_factory=list)

    def grid(self) -> dict[str, list[Any]]:
        """The values of every parameter for a grid (discrete distributions only).

        Raises:
            ValueError: naming a parameter with a continuous distribution.
        """
        return {name: grid_values(name, d) for name, d in self.distributions.items()}

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point, in the order a basic sweep runs them (last key varies fastest)."""
        grid = self.grid()
        names = list(grid)
        return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def distribution_from_override(override: Override) -> BaseDistribution | Any:
    """Turns one parsed override into a distribution, or its value if it is not a sweep.

    Args:
        override: an override parsed by Hydra's ``OverridesParser``.

    Returns:
        An Optuna distribution for a sweep, else the value as a string.

    Raises:
        ValueError: for a sweep the Optuna sweeper cannot express.
    """
    key = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        for c in choices:
            if not isinstance(c, str | int | float | bool | type(None)):
                raise ValueError(
                    f"`{key}`: a choice takes str, int, float, bool or null values, got {c!r}."
                )
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        start, stop, step = value.start, value.stop, value.step
        if any(isinstance(x, float) for x in (start, stop, step)):
            # range() excludes its stop; the distribution's high is the last value reached
            n = math.ceil((float(stop) - float(start)) / float(step)) - 1
            if n < 0:
                raise ValueError(f"`{key}`: range({start}, {stop}, {step}) is empty.")
            high = float(start) + n * float(step)
            _warn_range_stop(key, start, stop, step, high)
            return FloatDistribution(float(start), high, step=step)
        n = (int(stop) - int(start) - 1) // int(step)
        if n < 0:
            raise ValueError(f"`{key}`: range({start}, {stop}, {step}) is empty.")
        high = int(start) + n * int(step)
        _warn_range_stop(key, start, stop, step, high)
        return IntDistribution(int(start), high, step=int(step))
    if override.is_interval_sweep():
        low, high, log = value.start, value.end, "log" in value.tags
        if low is None or high is None or not low < high:
            raise ValueError(f"`{key}`: interval({low}, {high}) needs low < high.")
        if log and low <= 0:
            raise ValueError(f"`{key}`: a log interval needs low > 0, got {low}.")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ValueError(f"`{key}`: {override.input_line!r} is not supported by the Optuna sweeper.")


def parse_search_space(arguments: Iterable[str]) -> SearchSpace:
    """Parses overrides (``key=value``) into a :class:`SearchSpace`; later keys win."""
    space = SearchSpace()
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        if override.is_delete():
            space.passthrough.append(str(override.input_line))
            continue
        key = override.get_key_element()
        value = distribution_from_override(override)
        # a later override of a key keeps the key's place (as Hydra's basic sweeper does)
        if isinstance(value, BaseDistribution):
            space.fixed.pop(key, None)
            space.distributions[key] = value
        else:
            space.distributions.pop(key, None)
            space.fixed[key] = value
    return space


def params_to_arguments(params: Mapping[str, Any] | None) -> list[str]:
    """``hydra.sweeper.params`` as override strings (``key=value``)."""
    return [f"{k!s}={v}" for k, v in (params or {}).items()]


def grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    """The values of a discrete distribution, in order.

    Raises:
        ValueError: for a continuous distribution.
    """
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = round((dist.high - dist.low) / dist.step)
        return [dist.low + i * dist.step for i in range(n + 1)]
    raise ValueError(
        f"the grid sampler needs discrete values: `{name}` is {dist!r}; use choice(...) or "
        f"range(start, stop, step)."
    )


def format_value(value: Any) -> str:
    """A parameter value as Hydra override text (quoted when the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(params: Mapping[str, Any], space: SearchSpace) -> list[str]:
    """The overrides of one job: its sampled parameters, the fixed ones, the passthrough."""
    out = [f"{k}={format_value(v)}" for k, v in params.items()]
    out += [f"{k}={v}" for k, v in space.fixed.items()]
    return out + list(space.passthrough)


def same_params(a: Mapping[str, Any], b: Mapping[str, Any], names: Sequence[str]) -> bool:
    """Whether two trials have the same values of ``names`` (floats compared closely)."""
    for n in names:
        x, y = a.get(n), b.get(n)
        if isinstance(x, float) or isinstance(y, float):
            if x is None or y is None or not math.isclose(float(x), float(y), rel_tol=1e-9):
                return False
        elif x != y:
            return False
    return True
