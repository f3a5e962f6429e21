"""The sweep's Optuna sampler from its config: ``seed`` only where taken, resumable seeding.

* A ``seed`` key reaches the sampler only when its constructor takes one (the presets carry
  ``seed: null``, so ``hydra.sweeper.sampler._target_=optuna.samplers.PartialFixedSampler``
  would otherwise fail with an unexpected keyword).
* Samplers that need an optional package (``CmaEsSampler``: ``cmaes``) are checked when
  built, with an error naming the extra that installs it, not at the first trial.
* A seeded sampler is rebuilt before every trial with a seed drawn from (seed, trial
  number) (:class:`TrialSeededSampler`). A rerun of a sweep therefore continues the
  sequence instead of restarting it: a fresh ``TPESampler(seed=0)`` in a new process
  would propose the earlier trials' parameters again (its random start-up draws do not
  depend on the study's history). The samplers keep no other state in memory: TPE,
  random, CMA-ES, NSGA-II and GP read the history from the storage on every trial.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler, QMCSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

# samplers whose seed must stay the same for the whole study (their sequence is the point)
_FIXED_SEED = (GridSampler, QMCSampler)
# optional packages of Optuna samplers -> the extra that installs them
NEEDS: dict[str, tuple[str, str]] = {"CmaEsSampler": ("cmaes", "sweeps")}


def require_module(module: str, what: str, extra: str) -> None:
    """Raises a clear ImportError when ``module`` (needed by ``what``) is not installed.

    Raises:
        ImportError: naming the module, what needs it and ``pip install 'eecontrol[extra]'``.
    """
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"hydra.sweeper.sampler: {what} needs the package `{module}`, which is not "
            f"installed; install it with `pip install '{module}'` or the extra "
            f"`pip install 'eecontrol[{extra}]'` (from a clone: `pip install -e '.[{extra}]'`)."
        )


def _takes(cls: Any, name: str) -> bool:
    """Whether ``cls(...)`` accepts the keyword ``name``."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: pass it on, as written
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` of a study seeded with ``seed`` (deterministic, spread)."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """A seeded sampler rebuilt before each trial with :func:`trial_seed` (seed, number).

    The proposals depend only on the seed, the trial's number and the study's history, not
    on how many trials this process asked before: a rerun (a new process) of a finished or
    killed sweep asks new points, and asynchronous workers asking at once get different
    ones.

    Args:
        factory: builds the sampler for a given seed.
        seed: the study's seed.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory, self._seed = factory, int(seed)
        self._inner = factory(self._seed)

    @property
    def inner(self) -> BaseSampler:
        """The sampler of the current trial."""
        return self._inner

    def __str__(self) -> str:
        return f"{type(self._inner).__name__}(seed={self._seed}, per trial)"

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._factory(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def build_sampler(
    cfg: Mapping[str, Any] | None, grid: Callable[[], dict[str, list[Any]]] | None = None
) -> BaseSampler:
    """The sampler of ``hydra.sweeper.sampler`` (a ``_target_`` config; None: TPE).

    Args:
        cfg: the sampler config (plain containers).
        grid: the search space's grid, for ``GridSampler`` (its ``search_space``).

    Raises:
        ValueError: when the config does not make an Optuna sampler.
        ImportError: when the sampler's optional package is missing (naming the extra).
    """
    if not cfg:
        return TPESampler()
    import hydra.utils

    cfg = dict(cfg)
    target = str(cfg.get("_target_", ""))
    cls_name = target.rsplit(".", 1)[-1]
    if cls_name in NEEDS:
        module, extra = NEEDS[cls_name]
        require_module(module, cls_name, extra)
    if cls_name == "GridSampler" and grid is not None:
        cfg["search_space"] = grid()
    try:
        cls = hydra.utils.get_class(target)
    except Exception:
        cls = None
    if cls is not None and "seed" in cfg and not _takes(cls, "seed"):
        seed = cfg.pop("seed")
        if seed is not None:
            log.warning(
                "eecontrol_optuna: %s takes no `seed`; hydra.sweeper.sampler.seed=%s is not "
                "passed (seed its inner sampler, e.g. base_sampler.seed)",
                cls_name,
                seed,
            )
    seed = cfg.get("seed")

    def make(s: int | None) -> BaseSampler:
        kwargs = dict(cfg)
        if "seed" in kwargs:
            kwargs["seed"] = s
        sampler = hydra.utils.instantiate(kwargs, _convert_="all")
        if not isinstance(sampler, BaseSampler):
            raise ValueError(
                f"hydra.sweeper.sampler must make an optuna sampler, got "
                f"{type(sampler).__name__} from _target_={target!r}."
            )
        return sampler

    first = make(seed)
    if seed is None or isinstance(first, _FIXED_SEED):
        return first
    return TrialSeededSampler(make, int(seed))
