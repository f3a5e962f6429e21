"""The ``eecontrol_optuna`` sweeper's options: their checks and their spelling as overrides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from eecontrol.sweep.space import format_value
from eecontrol.util.optuna_study import REPORT_STEPS

DIRECTIONS = {
    "maximize": "maximize",
    "max": "maximize",
    "minimize": "minimize",
    "min": "minimize",
}
MODES = ("async", "batch")


def _plain(value: Any) -> Any:
    """A config node as plain Python (resolved)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def config_text(value: Any) -> str:
    """A value (dicts and lists included) as Hydra override text."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{config_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(config_text(v) for v in value) + "]"
    return format_value(value)


def check_directions(
    direction: str | Sequence[str] | None, objectives: Sequence[str] | None
) -> tuple[list[str] | None, str | None, list[str] | None]:
    """Checks ``direction`` and ``objectives``.

    Returns:
        The directions of a multi-objective study (else None), the single direction (else
        None) and the objectives' metric names (or None).

    Raises:
        ValueError: naming the option, its value and the valid choices.
    """
    direction = _plain(direction)
    many = direction if isinstance(direction, list | tuple) else [direction]
    for d in many:
        if (d is not None or len(many) > 1) and str(d) not in DIRECTIONS:
            raise ValueError(
                f"hydra.sweeper.direction must be one of {sorted(DIRECTIONS)} or a list of "
                f"them, got {direction!r}."
            )
    directions = [DIRECTIONS[str(d)] for d in many] if len(many) > 1 else None
    if isinstance(direction, list | tuple):
        direction = many[0] if len(many) == 1 else None
    objectives_out = None if objectives is None else [str(o) for o in _plain(objectives)]
    if objectives_out is not None and (
        directions is None or len(objectives_out) != len(directions)
    ):
        raise ValueError(
            f"hydra.sweeper.objectives={objectives_out} needs one metric per direction of a "
            f"multi-objective study, got direction={direction!r}."
        )
    return directions, None if direction is None else DIRECTIONS[str(direction)], objectives_out


def check_options(
    n_trials: Any,
    n_jobs: Any,
    max_retries: Any,
    timeout: Any,
    report_step: Any,
    mode: Any,
    heartbeat_interval: Any,
    grace_period: Any,
    max_failure_rate: Any,
) -> None:
    """Checks the sweeper's numeric and choice options.

    Raises:
        ValueError: naming the option, its value and the valid range.
    """
    for name, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
        if name == "n_trials" and value is None:
            continue  # a grid: every point
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"hydra.sweeper.{name} must be an integer >= 1, got {value!r}.")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"hydra.sweeper.max_retries must be an integer >= 0, got {max_retries!r}.")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"hydra.sweeper.timeout must be seconds > 0 or null, got {timeout!r}.")
    if report_step not in REPORT_STEPS:
        raise ValueError(
            f"hydra.sweeper.report_step must be one of {list(REPORT_STEPS)}, got {report_step!r}."
        )
    if mode not in MODES:
        raise ValueError(f"hydra.sweeper.mode must be one of {list(MODES)}, got {mode!r}.")
    for name, value in (
        ("heartbeat_interval", heartbeat_interval),
        ("grace_period", grace_period),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(
                f"hydra.sweeper.{name} must be an integer >= 1 (seconds) or null, got {value!r}."
            )
    if max_failure_rate is not None and (
        isinstance(max_failure_rate, bool)
        or not isinstance(max_failure_rate, int | float)
        or not 0.0 <= max_failure_rate <= 1.0
    ):
        raise ValueError(
            f"hydra.sweeper.max_failure_rate must be in [0, 1] or null, got {max_failure_rate!r}."
        )


def check_enqueue_trials(enqueue_trials: Any) -> list[dict[str, Any]]:
    """``hydra.sweeper.enqueue_trials`` as a list of non-empty parameter dicts.

    Raises:
        ValueError: for an entry that is not a non-empty map.
    """
    out = [dict(p) for p in (_plain(enqueue_trials) or [])]
    for p in out:
        if not isinstance(p, dict) or not p:
            raise ValueError(
                "hydra.sweeper.enqueue_trials must be a list of {parameter: value} maps, "
                f"got {p!r}."
            )
    return out
