"""Replay a finished sweep under every stopping policy: epochs used and regret.

A finished sweep, whose runs trained to the full budget, holds everything a stopping
policy would have seen: each run's curve. Replaying the runs one after another (in a
few random orders) under a policy gives the epochs that policy would have trained and
the configuration it would have picked, so a user can choose a pruner from their own
history rather than from someone else's benchmark. Nothing is trained; Lightning is not
needed.

Sources (:func:`load_sweep`):

* a Hydra multirun directory (``logs/train/multiruns/<date>``): one job directory per
  run with the CSV logger's ``metrics.csv``, ``summary.json`` (the monitored metric) and
  ``.hydra/overrides.yaml`` (the hyperparameters);
* an Optuna storage URL and a study name: the intermediate values of its ``COMPLETE``
  trials (the curve store of ``hparams_search=digits_curves`` is such a study:
  ``sqlite:///<sweep>/curves.db``, study ``eecontrol-curves``);
* a JSON file written by ``benchmarks/record_curves.py``.

Policies (:func:`default_policies`): no stopping; Lightning-style ``EarlyStopping``
(patience 5, Lightning's rule re-implemented here); Optuna's ``MedianPruner``,
``SuccessiveHalvingPruner`` and ``HyperbandPruner``; and this project's
:class:`~eecontrol.sweep.pruner.LearningCurvePruner` with each of its rules. The Optuna
policies run in real in-memory ``optuna.Study`` objects (ask/tell, every configuration
enqueued with its hyperparameters), so they decide exactly as in a live sweep.

Scores per policy, averaged over the orders: total epochs trained (and the saving
against no stopping), and the regret of the picked configuration: the best true value
in the sweep minus the true value of the configuration picked (in the metric's units;
sign-flipped for a metric to minimise, so regret is always >= 0), where a
configuration's true value is its best value over the full budget. Two picking rules:
``complete`` (only trials the policy let finish, as Optuna's ``best_trial``) and ``any``
(the best value the policy saw, stopped trials included).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from eecontrol.core.curves.forecasters import (
    DEFAULT_FORECASTER,
    FORECASTERS,
    check_forecaster,
    get_forecaster,
)

MODES = ("max", "min")


@dataclass(frozen=True)
class SweepRun:
    """One finished run of a sweep.

    Args:
        name: the run's name (job number, trial number or recorded id).
        values: the monitored metric after every validation, in order.
        hparams: the run's hyperparameters (numbers or strings).
    """

    name: str
    values: tuple[float, ...]
    hparams: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    """A finished sweep ready to replay.

    Args:
        runs: runs trained to the full budget (the only ones a replay can use).
        metric: the monitored metric's name.
        mode: ``max`` or ``min``.
        source: where the sweep was read from.
        skipped: ``name: why`` of every run left out (stopped early, no curve).
    """

    runs: list[SweepRun]
    metric: str
    mode: str
    source: str
    skipped: list[str] = field(default_factory=list)

    @property
    def budget(self) -> int:
        """The number of validations of a full run."""
        return len(self.runs[0].values)

    def truth(self) -> np.ndarray:
        """Each run's true value: its best over the full budget."""
        pick = max if self.mode == "max" else min
        return np.array([pick(r.values) for r in self.runs], dtype=float)


def _finish(
    candidates: list[SweepRun], skipped: list[str], metric: str, mode: str, source: str
) -> Sweep:
    """Keeps the runs of the longest length (a replay needs full curves) and checks them."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
    candidates = [r for r in candidates if r.values]
    if not candidates:
        raise ValueError(
            f"{source}: no run with a curve of {metric!r} found"
            + (f" ({len(skipped)} left out: {'; '.join(skipped[:5])})" if skipped else "")
            + "."
        )
    budget = max(len(r.values) for r in candidates)
    full = [r for r in candidates if len(r.values) == budget]
    for r in candidates:
        if len(r.values) < budget:
            skipped.append(f"{r.name}: {len(r.values)} of {budget} validations (stopped early)")
    if len(full) < 2:
        raise ValueError(
            f"{source}: a replay needs at least 2 runs trained to the full budget "
            f"({budget} validations of {metric!r}); found {len(full)}."
        )
    if skipped:
        warnings.warn(
            f"{source}: {len(skipped)} run(s) left out of the replay: {'; '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""),
            stacklevel=3,
        )
    return Sweep(runs=full, metric=metric, mode=mode, source=source, skipped=skipped)


def load_recorded(path: str | Path, metric: str | None = None) -> Sweep:
    """Reads a sweep recorded by ``benchmarks/record_curves.py``.

    Args:
        path: the JSON file.
        metric: the per-run key to replay (default: the file's ``monitor``, else
            ``val_acc``).

    Returns:
        The sweep, truncated to the file's ``epoch_budget``.
    """
    data = json.loads(Path(path).read_text())
    metric = metric or data.get("monitor", "val_acc")
    mode = data.get("mode", "max")
    budget = int(data.get("epoch_budget", 0)) or None
    runs = []
    for r in data["runs"]:
        if metric not in r:
            raise ValueError(f"{path}: run {r.get('id')} has no curve {metric!r}.")
        runs.append(
            SweepRun(str(r.get("id", len(runs))), tuple(r[metric][:budget]), r.get("config", {}))
        )
    return _finish(runs, [], metric, mode, str(path))


def _parse_value(text: str) -> Any:
    """A Hydra override value as a number when it is one, else the string."""
    try:
        number = float(text)
    except ValueError:
        return text.strip("'\"")
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def read_overrides(job: Path) -> dict[str, Any]:
    """The ``key=value`` overrides of one Hydra job (``.hydra/overrides.yaml``)."""
    path = job / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    out: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        item = line.strip().removeprefix("- ").strip().strip("'\"")
        if "=" not in item or item.startswith(("hparams_search", "experiment", "hydra")):
            continue
        key, value = item.split("=", 1)
        out[key.lstrip("+~")] = _parse_value(value)
    return out


def read_metric_curve(job: Path, metric: str) -> list[float]:
    """The values of ``metric`` in a job's ``metrics.csv`` (latest version), one per row
    that has it, in order."""
    files = sorted(job.glob("csv/version_*/metrics.csv")) or sorted(job.glob("**/metrics.csv"))
    if not files:
        return []
    with files[-1].open() as f:
        rows = list(csv.DictReader(f))
    values = []
    for row in rows:
        text = row.get(metric)
        if text not in (None, ""):
            value = float(text)
            if math.isfinite(value):
                values.append(value)
    return values


def load_multirun(path: str | Path, metric: str | None = None, mode: str | None = None) -> Sweep:
    """Reads a Hydra multirun directory written by ``eecontrol-train -m``.

    Args:
        path: the sweep directory (its numbered job directories hold the runs).
        metric: the metric to replay (default: ``optimized_metric`` in the jobs'
            ``summary.json``).
        mode: ``max`` or ``min`` (default: ``min`` when the metric's name contains
            ``loss``, else ``max``).

    Returns:
        The sweep.

    Raises:
        FileNotFoundError: if ``path`` is not a directory or holds no job directories.
        ValueError: if no metric can be found, or fewer than 2 full runs.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist.")
    jobs = sorted(
        (p for p in root.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    if not jobs:
        raise FileNotFoundError(
            f"{root} holds no Hydra job directories (<job>/.hydra); pass the multirun "
            "directory of a finished sweep (logs/train/multiruns/<date>/<time>)."
        )
    if metric is None:
        for job in jobs:
            summary = job / "summary.json"
            if summary.exists():
                metric = json.loads(summary.read_text()).get("optimized_metric")
                if metric:
                    break
    if not metric:
        raise ValueError(f"{root}: no job's summary.json names an optimized_metric; pass --metric.")
    mode = mode or ("min" if "loss" in metric else "max")
    runs, skipped = [], []
    for job in jobs:
        values = read_metric_curve(job, metric)
        if not values:
            skipped.append(f"{job.name}: no {metric!r} in a metrics CSV")
            continue
        runs.append(SweepRun(job.name, tuple(values), read_overrides(job)))
    return _finish(runs, skipped, metric, mode, str(root))


def load_optuna(storage: str, study_name: str | None) -> Sweep:
    """Reads the ``COMPLETE`` trials of an Optuna study (their intermediate values).

    Args:
        storage: an Optuna storage URL (``sqlite:///path.db``, ``postgresql://...``).
        study_name: the study's name.

    Returns:
        The sweep (mode from the study's direction).

    Raises:
        ValueError: if ``study_name`` is missing or unknown, or the study has fewer than
            2 finished trials with intermediate values.
    """
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not study_name:
        raise ValueError(f"{storage}: pass --study NAME (studies in this storage: {names}).")
    if study_name not in names:
        raise ValueError(f"{storage}: no study {study_name!r} (studies: {names}).")
    study = optuna.load_study(study_name=study_name, storage=storage)
    runs, skipped = [], []
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.COMPLETE:
            skipped.append(f"trial {t.number}: {t.state.name}")
            continue
        values = tuple(t.intermediate_values[s] for s in sorted(t.intermediate_values))
        if not values:
            skipped.append(f"trial {t.number}: no intermediate values")
            continue
        params = dict(t.params) or dict(t.user_attrs.get("hparams", {}))
        runs.append(SweepRun(str(t.number), values, params))
    if not runs:
        raise ValueError(
            f"{storage}: study {study_name!r} has no finished (COMPLETE) trial with "
            f"intermediate values ({len(skipped)} other trials)."
        )
    mode = "max" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "min"
    return _finish(runs, skipped, "intermediate value", mode, f"{storage} ({study_name})")


def load_sweep(
    source: str | Path,
    study: str | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> Sweep:
    """Reads a finished sweep from a multirun directory, an Optuna URL or a recorded JSON.

    Args:
        source: the directory, the storage URL (``scheme://...``) or the ``.json`` file.
        study: the study name (Optuna sources).
        metric: the metric to replay (directories and JSON files).
        mode: ``max`` or ``min`` (overrides the source's).

    Returns:
        The sweep.
    """
    text = str(source)
    if "://" in text:
        sweep = load_optuna(text, study)
    elif text.endswith(".json") and Path(text).is_file():
        sweep = load_recorded(text, metric)
    else:
        sweep = load_multirun(text, metric, mode)
    if mode is not None and mode != sweep.mode:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}.")
        sweep.mode = mode
    return sweep


def early_stopping_epochs(
    values: Sequence[float], mode: str, patience: int = 5, min_delta: float = 0.0
) -> int:
    """Epochs a run trains under Lightning's ``EarlyStopping`` (its rule, without Lightning).

    A value improves when it beats the best so far by more than ``min_delta``; the run
    stops when ``patience`` validations in a row did not improve.
    """
    best = math.inf if mode == "min" else -math.inf
    wait = 0
    for i, v in enumerate(values):
        improved = v < best - min_delta if mode == "min" else v > best + min_delta
        if improved:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return i + 1
    return len(values)


@dataclass(frozen=True)
class Policy:
    """A stopping policy to replay.

    Args:
        pruner: a factory of a fresh Optuna pruner, or None for ``early_stopping``.
        patience: the EarlyStopping patience (when ``pruner`` is None).
    """

    pruner: Callable[[], optuna.pruners.BasePruner] | None = None
    patience: int = 5


def guess_bounds(sweep: Sweep) -> tuple[float, float] | None:
    """``(0, 1)`` for a maximised metric whose every value lies in [0, 1] (an accuracy)."""
    if sweep.mode == "max" and all(0.0 <= v <= 1.0 for r in sweep.runs for v in r.values):
        return (0.0, 1.0)
    return None


def default_policies(
    budget: int,
    bounds: Sequence[float] | None = None,
    patience: int = 5,
    forecasters: Sequence[str] = (DEFAULT_FORECASTER,),
) -> dict[str, Policy]:
    """Every policy the replay compares, by name.

    Ours: :class:`~eecontrol.sweep.pruner.LearningCurvePruner` with its in-run rule
    alone (``ours_in_run``), Domhan et al.'s sweep rule alone (``ours_sweep_rule``), the
    cross-run rule alone (``ours_cross_run``, no forecaster), its default combination
    (``ours_both``), and :class:`~eecontrol.sweep.halving.PredictiveHalvingPruner`
    (``ours_predictive_halving``). The forecasting policies come once per forecaster in
    ``forecasters``: with the default forecaster under these names, with another one
    under the name plus ``_<forecaster>`` (``ours_in_run_pfn``).

    Args:
        budget: validations of a full run (the pruners' horizon).
        bounds: the metric's range for this project's pruners (None: unbounded).
        patience: the EarlyStopping patience.
        forecasters: names in :data:`~eecontrol.core.curves.forecasters.FORECASTERS`.

    Raises:
        ValueError: for an unknown forecaster (the message lists the valid names).
    """
    from eecontrol.sweep.halving import PredictiveHalvingPruner
    from eecontrol.sweep.pruner import LearningCurvePruner

    names = [check_forecaster(f) for f in forecasters]
    b = tuple(bounds) if bounds is not None else None

    def ours(**kwargs: Any) -> Callable[[], optuna.pruners.BasePruner]:
        return lambda: LearningCurvePruner(horizon=budget, bounds=b, **kwargs)

    def halving(forecaster: str) -> Callable[[], optuna.pruners.BasePruner]:
        return lambda: PredictiveHalvingPruner(horizon=budget, bounds=b, forecaster=forecaster)

    out = {
        "none": Policy(optuna.pruners.NopPruner),
        f"early_stopping_p{patience}": Policy(None, patience),
        "median": Policy(optuna.pruners.MedianPruner),
        "successive_halving": Policy(optuna.pruners.SuccessiveHalvingPruner),
        "hyperband": Policy(
            lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=budget)
        ),
    }
    for k, f in enumerate(names):
        tag = "" if f == DEFAULT_FORECASTER else f"_{f}"
        out[f"ours_in_run{tag}"] = Policy(ours(cross_run=False, forecaster=f))
        out[f"ours_sweep_rule{tag}"] = Policy(ours(cross_run=False, rule="sweep", forecaster=f))
        if k == 0:
            out["ours_cross_run"] = Policy(ours(in_run=False))
        out[f"ours_both{tag}"] = Policy(ours(forecaster=f))
        if budget >= 2:
            out[f"ours_predictive_halving{tag}"] = Policy(halving(f))
    return out


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


def format_table(result: Mapping[str, Any]) -> str:
    """The replay's table as plain text, one policy per line."""
    lines = [
        f"{result['source']}: {result['runs']} runs x {result['budget']} validations of "
        f"{result['metric']} ({result['mode']}); true best {result['true_best']:.5g}; "
        f"{result['orders']} orders",
        f"{'policy':>24} {'epochs':>8} {'saving':>7} {'stopped':>7} "
        f"{'regret(complete)':>16} {'regret(any)':>11}",
    ]
    for name, row in result["policies"].items():
        lines.append(
            f"{name:>24} {row['epochs']:8.0f} {row['saving_x']:6.2f}x {row['stopped']:7.1f} "
            f"{row['regret_complete']:16.4g} {row['regret_any']:11.4g}"
        )
    lines.append(
        "regret: best true value in the sweep minus the picked configuration's, in the "
        "metric's units (>= 0; mean over orders)"
    )
    return "\n".join(lines)


def plot_front(result: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Draws regret (picking rule ``any``) against epochs for every policy and order.

    Each policy is one marker per order and a larger one at its mean; the line joins the
    policies on the front (no other policy uses fewer epochs at lower mean regret).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    full = result["runs"] * result["budget"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = []
    for k, (name, row) in enumerate(result["policies"].items()):
        color = plt.get_cmap("tab20")(k % 20)
        xs = [s["epochs"] / full for s in row["per_order"]]
        ys = [s["regret_any"] for s in row["per_order"]]
        ax.scatter(xs, ys, s=12, alpha=0.35, color=color)
        ours = name.startswith("ours")
        ax.scatter(
            [row["epochs"] / full],
            [row["regret_any"]],
            s=70,
            color=color,
            marker="*" if ours else "o",
            label=name,
            edgecolor="black",
            linewidth=0.5,
        )
        pts.append((row["epochs"] / full, row["regret_any"]))
    front = sorted(p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts))
    if front:
        ax.plot(*zip(*front), color="gray", linestyle="--", linewidth=1, zorder=0)
    ax.set_xlabel("epochs used (fraction of training every run to the budget)")
    ax.set_ylabel(f"regret ({result['metric']}, {result['mode']})")
    ax.set_title(title or f"{Path(str(result['source'])).name}: regret vs epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(parser: Any) -> None:
    """The ``eecontrol replay`` options, on an ``argparse`` (sub)parser."""
    parser.add_argument(
        "sweep",
        help="a Hydra multirun directory, an Optuna storage URL (with --study) or a JSON "
        "file recorded by benchmarks/record_curves.py",
    )
    parser.add_argument("--study", default=None, help="Optuna study name (URL sources)")
    parser.add_argument(
        "--metric", default=None, help="the metric to replay (default: the sweep's objective)"
    )
    parser.add_argument(
        "--mode", choices=MODES, default=None, help="max or min (default: from the source)"
    )
    parser.add_argument("--orders", type=int, default=5, help="random run orders (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the orders")
    parser.add_argument(
        "--patience", type=int, default=5, help="EarlyStopping patience (default 5)"
    )
    parser.add_argument(
        "--forecaster",
        nargs="+",
        default=[DEFAULT_FORECASTER],
        metavar="NAME",
        help=f"replay our forecasting policies with each of these forecasters "
        f"({', '.join(FORECASTERS)}; default {DEFAULT_FORECASTER}); policies of a "
        f"forecaster other than the default are named with _NAME (ours_in_run_pfn)",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=None,
        metavar="NAME",
        help="replay only these policies (default: all; names as in the table)",
    )
    parser.add_argument("--plot", type=Path, default=None, help="write the front PNG here")
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON here")


def command(args: Any) -> int:
    """Runs ``eecontrol replay`` with parsed ``args``; returns the exit status."""
    import sys

    if args.orders < 1:
        print(f"eecontrol replay: --orders must be >= 1, got {args.orders}", file=sys.stderr)
        return 2
    if args.patience < 1:
        print(f"eecontrol replay: --patience must be >= 1, got {args.patience}", file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.sweep, args.study, args.metric, args.mode)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"eecontrol replay: {err}", file=sys.stderr)
        return 2
    bounds = guess_bounds(sweep)
    try:
        policies = default_policies(sweep.budget, bounds, args.patience, args.forecaster)
        for name in dict.fromkeys(args.forecaster):
            get_forecaster(name).load()  # a forecaster that cannot load fails here, clearly
    except (ValueError, ImportError) as err:
        print(f"eecontrol replay: --forecaster: {err}", file=sys.stderr)
        return 2
    if args.policies:
        unknown = sorted(set(args.policies) - set(policies))
        if unknown:
            print(
                f"eecontrol replay: unknown --policies {unknown}; choose from {list(policies)}",
                file=sys.stderr,
            )
            return 2
        policies = {k: v for k, v in policies.items() if k in args.policies}
    result = replay(
        sweep,
        policies,
        orders=args.orders,
        seed=args.seed,
        bounds=bounds,
        progress=lambda name, row: print(f"  replayed {name} ({row['seconds']:.1f} s)", flush=True),
    )
    print(format_table(result))
    if sweep.skipped:
        print(f"left out: {'; '.join(sweep.skipped)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"table: {args.json}")
    if args.plot is not None:
        print(f"front: {plot_front(result, args.plot)}")
    return 0
