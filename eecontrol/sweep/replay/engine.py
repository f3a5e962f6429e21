"""Replaying a sweep's runs in random orders under each policy, and scoring the choices
(see :mod:`eecontrol.sweep.replay`)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from eecontrol.sweep.replay.loading import Sweep, SweepRun
from eecontrol.sweep.replay.policies import (
    Policy,
    default_policies,
    early_stopping_epochs,
    guess_bounds,
)


def _distributions(runs: Sequence[SweepRun]) -> dict[str, BaseDistribution]:
    """One Optuna distribution per hyperparameter that varies, spanning the sweep's values."""
    names = sorted({k for r in runs for k in r.hparams})
    out: dict[str, BaseDistribution] = {}
    for name in names:
        values = [r.hparams.get(name) for r in runs]
        if len({str(v) for v in values}) < 2:
            continue  # the same in every run: not a searched hyperparameter
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[name] = FloatDistribution(float(min(values)), float(max(values)))
        else:
            out[name] = CategoricalDistribution(sorted({str(v) for v in values}))
    return out


def _params(run: SweepRun, dists: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """The run's hyperparameters as values of ``dists``."""
    return {
        k: float(run.hparams[k]) if isinstance(d, FloatDistribution) else str(run.hparams.get(k))
        for k, d in dists.items()
    }


def replay_order(
    sweep: Sweep, order: Sequence[int], policy: Policy, name: str = "replay"
) -> list[dict[str, Any]]:
    """Replays the sweep's runs in ``order`` under ``policy``.

    Returns:
        One row per run: ``run`` (index), ``epochs`` trained, ``value`` (best value seen)
        and ``complete`` (the policy let it finish).
    """
    best_of = max if sweep.mode == "max" else min
    rows: list[dict[str, Any]] = []
    if policy.pruner is None:
        for i in order:
            values = sweep.runs[i].values
            n = early_stopping_epochs(values, sweep.mode, policy.patience)
            rows.append({"run": i, "epochs": n, "value": best_of(values[:n]), "complete": True})
        return rows
    direction = "maximize" if sweep.mode == "max" else "minimize"
    # a fixed study name: HyperbandPruner assigns brackets by hashing it
    study = optuna.create_study(
        study_name=name,
        direction=direction,
        pruner=policy.pruner(),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    dists = _distributions(sweep.runs)
    for i in order:
        run = sweep.runs[i]
        study.enqueue_trial(_params(run, dists))
        trial = study.ask(dict(dists))
        for step, value in enumerate(run.values):
            trial.report(float(value), step)
            if step + 1 < len(run.values) and trial.should_prune():
                seen = best_of(run.values[: step + 1])
                rows.append({"run": i, "epochs": step + 1, "value": seen, "complete": False})
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            seen = best_of(run.values)
            rows.append({"run": i, "epochs": len(run.values), "value": seen, "complete": True})
            study.tell(trial, seen)
    return rows


def score(rows: Sequence[Mapping[str, Any]], truth: np.ndarray, mode: str) -> dict[str, float]:
    """Epochs used, stopped runs, and the regret of each picking rule's choice."""
    sign = 1.0 if mode == "max" else -1.0
    best = float(sign * np.max(sign * truth))

    def regret(pool: Sequence[Mapping[str, Any]]) -> float:
        if not pool:
            return math.nan
        pick = max(pool, key=lambda r: sign * r["value"])
        return float(sign * (best - truth[pick["run"]])) + 0.0  # + 0.0: no "-0.0"

    return {
        "epochs": float(sum(r["epochs"] for r in rows)),
        "stopped": float(sum(not r["complete"] for r in rows)),
        "regret_complete": regret([r for r in rows if r["complete"]]),
        "regret_any": regret(rows),
    }


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """No per-study log lines or experimental warnings from Optuna while replaying."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


MEMOISED_RULES = ("in_run_rule", "convergence_rule", "sweep_rule")


@contextlib.contextmanager
def memoised_in_run_rule() -> Iterator[None]:
    """Computes each rule once per question while replaying.

    The pruner's rules depend only on their arguments (the curve so far, the horizon, the
    options and, for the sweep rule, the sweep's best; bootstraps are seeded), so every
    order of a replay asks many of the same questions; this caches the answers for the
    duration of the ``with`` block by wrapping the rules in ``eecontrol.sweep.pruner``.
    """
    import eecontrol.sweep.pruner as pruner_module

    originals = {n: getattr(pruner_module, n) for n in MEMOISED_RULES if hasattr(pruner_module, n)}

    def memoise(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.cache
        def cached(x: tuple[float, ...], y: tuple[float, ...], rest: str, kw: str) -> Any:
            return original(np.array(x), np.array(y), *json.loads(rest), **json.loads(kw))

        def wrapper(x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
            rest = json.dumps([float(a) if a is not None else None for a in args])
            key = json.dumps(kwargs, sort_keys=True, default=list)
            return cached(tuple(map(float, x)), tuple(map(float, y)), rest, key)

        return wrapper

    for name, original in originals.items():
        setattr(pruner_module, name, memoise(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(pruner_module, name, original)


def replay(
    sweep: Sweep,
    policies: Mapping[str, Policy] | None = None,
    orders: int = 5,
    seed: int = 0,
    bounds: Sequence[float] | str | None = "auto",
    progress: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Replays ``sweep`` under every policy in ``orders`` random orders.

    Args:
        sweep: the finished sweep.
        policies: name -> policy (default: :func:`default_policies`).
        orders: random orders of the runs, >= 1.
        seed: seed of the orders.
        bounds: the metric's range for this project's pruner; ``"auto"``: (0, 1) when
            every value of a maximised metric lies in [0, 1] (:func:`guess_bounds`).
        progress: called with each policy's name and scores as it finishes.

    Returns:
        ``source``, ``metric``, ``mode``, ``runs``, ``budget``, ``true_best``, ``orders``,
        ``skipped`` and ``policies`` (name -> mean ``epochs``, ``saving_x``, ``stopped``,
        ``regret_complete``, ``regret_any``, their maxima over orders, the per-order
        scores and the seconds it took).
    """
    import time

    if int(orders) < 1:
        raise ValueError(f"`orders` must be >= 1, got {orders}.")
    if bounds == "auto":
        bounds = guess_bounds(sweep)
    if policies is None:
        policies = default_policies(sweep.budget, bounds)
    truth = sweep.truth()
    rng = np.random.default_rng(seed)
    perms = [list(map(int, rng.permutation(len(sweep.runs)))) for _ in range(int(orders))]
    table: dict[str, Any] = {}
    with memoised_in_run_rule(), _quiet_optuna():
        for name, policy in policies.items():
            t0 = time.perf_counter()
            scores = [
                score(replay_order(sweep, p, policy, f"{name}-{k}"), truth, sweep.mode)
                for k, p in enumerate(perms)
            ]
            row: dict[str, Any] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
            for k in ("regret_complete", "regret_any"):
                row[f"{k}_max"] = float(np.max([s[k] for s in scores]))
            row["per_order"] = scores
            row["seconds"] = time.perf_counter() - t0
            table[name] = row
            if progress is not None:
                progress(name, row)
    full = float(len(sweep.runs) * sweep.budget)
    for row in table.values():
        row["saving_x"] = full / row["epochs"]
    return {
        "source": sweep.source,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "runs": len(sweep.runs),
        "budget": sweep.budget,
        "bounds": list(bounds) if bounds is not None else None,
        "true_best": float(truth.max() if sweep.mode == "max" else truth.min()),
        "orders": int(orders),
        "skipped": list(sweep.skipped),
        "policies": table,
    }
